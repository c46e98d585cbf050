"""coordctl: the operator's command line for coordd."""
