#!/bin/sh
# The target of the crash test, run by the command applier: a system that honours idempotency
# keys, as the webhook targets rollguard drives are expected to. Every call is logged; only
# the first call for a key changes anything, and that change is logged as an effect.
set -eu
dir="$EFFECTS_DIR"
cat > /dev/null  # the step document; this target needs only the environment
echo "$ROLLGUARD_IDEMPOTENCY_KEY" >> "$dir/calls.log"
if mkdir "$dir/keys/$ROLLGUARD_IDEMPOTENCY_KEY" 2> /dev/null; then
    echo "$ROLLGUARD_IDEMPOTENCY_KEY $ROLLGUARD_COMPONENT=$ROLLGUARD_TO_VERSION" >> "$dir/effects.log"
    echo "set $ROLLGUARD_COMPONENT to $ROLLGUARD_TO_VERSION"
else
    echo "$ROLLGUARD_COMPONENT already $ROLLGUARD_TO_VERSION"
fi
