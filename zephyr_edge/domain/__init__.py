"""Pure rules, no I/O: asset hashes and paths, the snapshot schema, hostnames and labels, publish stamps, write tokens."""
