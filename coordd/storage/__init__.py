"""Storage: the write-ahead log, snapshots, fsck and the file helpers they share."""
