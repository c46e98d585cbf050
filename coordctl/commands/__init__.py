"""coordctl's commands by topic. Each module imports ``coordctl.base`` (never
``coordctl.cli``) and lists its commands in ``COMMANDS`` for ``coordctl.cli``."""
