"""Maps the layout's folders to namespaced import names (pyproject.toml holds the rest).

The folders stay as the layout shows them (``rollguard/`` core, ``services/``, ``shell/``);
what gets installed is ``rollguard``, ``rollguard_services`` and ``rollguard_shell``, never a
generic top-level name such as ``services`` that would clash with a user's own package.
"""

from setuptools import find_packages, setup

#: import name → folder
FOLDERS = {"rollguard": "rollguard", "rollguard_services": "services", "rollguard_shell": "shell"}


def packages() -> list[str]:
    return [
        name + ("." + sub if sub else "")
        for name, folder in FOLDERS.items()
        for sub in ["", *find_packages(folder)]
    ]


setup(packages=packages(), package_dir=FOLDERS)
