"""The `reelserve` command line, and only that: each command parses its options and calls the
service, the store or the SDK (`reelserve serve | worker | generate | keys | tasks | migrate`;
`main.py` assembles them)."""
