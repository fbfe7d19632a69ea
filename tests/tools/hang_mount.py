#!/usr/bin/env python3
"""Mounts a FUSE filesystem at MOUNTPOINT whose daemon never answers, so any
statvfs() on it blocks: a stand-in for a dead NFS server. Prints "mounted"
once the mount exists, then holds the /dev/fuse descriptor until stdin
closes (the test's end). The test aborts the connection and unmounts."""
import os
import subprocess
import sys

mountpoint = sys.argv[1]
fd = os.open("/dev/fuse", os.O_RDWR)
r = subprocess.run(
    ["mount", "-i", "-t", "fuse", "-o", f"fd={fd},rootmode=40000,user_id=0,group_id=0",
     "vmscope-hang", mountpoint],
    pass_fds=[fd], capture_output=True, text=True)
if r.returncode != 0:
    print("mount failed:", r.stderr.strip(), flush=True)
    sys.exit(1)
print("mounted", flush=True)
sys.stdin.read()
