"""The application shell: the `rollguard` command, the runner behind `rollguard up`, the demo.

The top floor: it reads the environment, builds every service from its settings and runs
them. It imports the core (``rollguard``) and the services (``rollguard_services``); nothing
imports it.
"""

#: Every service `rollguard run` knows, by the name docker-compose uses. Here rather than in
#: the runner so that `rollguard --help` does not import the services (scipy, pyarrow, faust:
#: about a second); the runner's SERVICES has exactly these keys (tests/test_deploy.py).
SERVICE_NAMES = ("router", "detector", "decider", "executor", "ledger", "notifier", "api")
