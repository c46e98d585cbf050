"""Storage: the daemon reaches it only through ``store`` (the ``Store`` interface);
behind it ``wal``, ``snapshot``, ``fsck`` and the ``files`` helpers they share."""
