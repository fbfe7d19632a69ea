//! `/proc/self/mountinfo`: the mount table, for host filesystem metrics.
//!
//! Line format (proc(5)):
//! `36 35 98:0 /root /mnt rw,noatime master:1 shared:2 - ext4 /dev/sda1 rw,errors=continue`.
//! The optional fields (`master:1 ...`) end at a lone `-`. Paths are escaped by
//! the kernel as octal `\040` (space), `\011` (tab), `\012` (newline) and
//! `\134` (backslash); any `\NNN` is decoded, then non-UTF-8 bytes are replaced.
//! Malformed lines, and a last line without a newline (cut by a short read),
//! are skipped: this parser never fails.
//!
//! [`is_pseudo_fs`] and [`is_network_fs`] let the caller skip filesystems that
//! hold no disk space, and ones whose `statvfs` can hang on a dead server.

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    pub major: u32,
    pub minor: u32,
    /// Path inside the filesystem that is mounted (`/` unless a bind mount).
    pub root: String,
    pub mountpoint: String,
    pub fstype: String,
    /// Mount source (`/dev/sda1`, `server:/export`, `tmpfs`, ...).
    pub source: String,
    /// Per-mount options (`rw,noatime`).
    pub options: String,
    /// Per-superblock options (`rw,errors=continue`).
    pub super_options: String,
}

/// Parse the mount table; malformed lines are skipped.
pub fn parse_mountinfo(buf: &[u8]) -> Vec<MountInfo> {
    // A last line without '\n' may be cut by a short read: skipped.
    let (lines, _) = crate::error::complete_lines(buf);
    lines
        .split(|&b| b == b'\n')
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Option<MountInfo> {
    let f: Vec<&[u8]> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    if f.len() < 10 {
        return None;
    }
    let num = |b: &[u8]| crate::error::parse_u64(b).and_then(|v| u32::try_from(v).ok());
    let mount_id = num(f[0])?;
    let parent_id = num(f[1])?;
    let colon = f[2].iter().position(|&b| b == b':')?;
    let major = num(&f[2][..colon])?;
    let minor = num(&f[2][colon + 1..])?;
    let sep = 6 + f[6..].iter().position(|t| *t == b"-")?;
    let fstype = f.get(sep + 1)?;
    let source = f.get(sep + 2)?;
    let super_options = f.get(sep + 3).copied().unwrap_or_default();
    Some(MountInfo {
        mount_id,
        parent_id,
        major,
        minor,
        root: unescape(f[3]),
        mountpoint: unescape(f[4]),
        fstype: unescape(fstype),
        source: unescape(source),
        options: unescape(f[5]),
        super_options: unescape(super_options),
    })
}

/// Decode the kernel's `\NNN` octal escapes; a `\` not followed by three
/// octal digits stays as it is.
fn unescape(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(&[d0, d1, d2]) = b.get(i + 1..i + 4)
            && [d0, d1, d2].iter().all(|d| (b'0'..=b'7').contains(d))
            && d0 <= b'3'
        {
            out.push(((d0 - b'0') << 6) | ((d1 - b'0') << 3) | (d2 - b'0'));
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Filesystems that hold no disk space of their own (kernel interfaces,
/// memory-backed, automount placeholders). `overlay` is not one: it reports
/// its upper directory's space, which is real.
pub fn is_pseudo_fs(fstype: &str) -> bool {
    matches!(
        fstype,
        "proc"
            | "sysfs"
            | "tmpfs"
            | "devtmpfs"
            | "devpts"
            | "ramfs"
            | "rootfs"
            | "cgroup"
            | "cgroup2"
            | "cpuset"
            | "securityfs"
            | "debugfs"
            | "tracefs"
            | "configfs"
            | "fusectl"
            | "mqueue"
            | "hugetlbfs"
            | "pstore"
            | "bpf"
            | "binfmt_misc"
            | "autofs"
            | "efivarfs"
            | "rpc_pipefs"
            | "nfsd"
            | "nsfs"
            | "selinuxfs"
            | "sockfs"
            | "pipefs"
            | "anon_inodefs"
            | "dax"
            | "zonefs"
            | "fuse.lxcfs"
            | "fuse.gvfsd-fuse"
            | "fuse.portal"
            | "fuse.snapfuse"
    )
}

/// Filesystems served over a network (or by a process that may stall):
/// `statvfs` on them can block for minutes when the server is gone.
pub fn is_network_fs(fstype: &str) -> bool {
    matches!(
        fstype,
        "nfs"
            | "nfs4"
            | "cifs"
            | "smb3"
            | "smbfs"
            | "ncpfs"
            | "afs"
            | "coda"
            | "ceph"
            | "glusterfs"
            | "lustre"
            | "gpfs"
            | "beegfs"
            | "ocfs2"
            | "gfs2"
            | "9p"
            | "davfs"
            | "fuse.sshfs"
            | "fuse.glusterfs"
            | "fuse.ceph-fuse"
            | "fuse.cephfs"
            | "fuse.s3fs"
            | "fuse.rclone"
            | "fuse.davfs2"
            | "fuse.gcsfuse"
            | "fuse.juicefs"
            | "fuse.moosefs"
            | "fuse.mfs"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
40 22 0:35 / /mnt/my\\040disk\\011tab\\012nl\\134bs rw,relatime - xfs /dev/mapper/vg-my\\040lv rw,attr2
41 22 0:36 / /srv/nfs rw,relatime shared:30 master:2 propagate_from:3 - nfs4 server:/export rw,vers=4.2
42 22 0:37 /sub /var/lib/overlay rw - overlay overlay rw,lowerdir=/a,upperdir=/b
";

    #[test]
    fn real_table() {
        let m = parse_mountinfo(REAL);
        assert_eq!(m.len(), 6);
        assert_eq!(
            m[0],
            MountInfo {
                mount_id: 22,
                parent_id: 1,
                major: 8,
                minor: 1,
                root: "/".into(),
                mountpoint: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/sda1".into(),
                options: "rw,relatime".into(),
                super_options: "rw,errors=remount-ro".into(),
            }
        );
        assert_eq!(m[3].mountpoint, "/mnt/my disk\ttab\nnl\\bs");
        assert_eq!(m[3].source, "/dev/mapper/vg-my lv");
        // Several optional fields, still found by the lone '-'.
        assert_eq!(m[4].fstype, "nfs4");
        assert_eq!(m[4].source, "server:/export");
        assert_eq!(m[5].root, "/sub");
        assert_eq!(m[5].fstype, "overlay");
    }

    #[test]
    fn malformed_lines_skipped() {
        let buf = b"x 1 8:1 / / rw - ext4 /dev/sda1 rw\n22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw\n22 1 81 / / rw - ext4 /dev/sda1 rw\n22 1 8:1 / / rw -\n\n22 1 8:1 / /ok rw - ext4 /dev/sda1 rw\n";
        let m = parse_mountinfo(buf);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mountpoint, "/ok");
        assert!(parse_mountinfo(b"").is_empty());
        assert_eq!(parse_mountinfo(&REAL[..REAL.len() - 1]).len(), 5);
    }

    #[test]
    fn unescape_edges() {
        assert_eq!(unescape(b"a\\040b"), "a b");
        assert_eq!(unescape(b"trailing\\04"), "trailing\\04");
        assert_eq!(unescape(b"\\999"), "\\999");
        assert_eq!(unescape(b"\\377"), "\u{fffd}");
        assert_eq!(unescape(b"\\"), "\\");
    }

    #[test]
    fn classification() {
        for fs in [
            "proc", "sysfs", "tmpfs", "devtmpfs", "cgroup", "cgroup2", "devpts", "mqueue",
        ] {
            assert!(is_pseudo_fs(fs), "{fs}");
            assert!(!is_network_fs(fs), "{fs}");
        }
        for fs in ["ext4", "xfs", "btrfs", "overlay", "zfs", "vfat"] {
            assert!(!is_pseudo_fs(fs), "{fs}");
            assert!(!is_network_fs(fs), "{fs}");
        }
        for fs in [
            "nfs",
            "nfs4",
            "cifs",
            "smb3",
            "fuse.sshfs",
            "ceph",
            "glusterfs",
            "9p",
        ] {
            assert!(is_network_fs(fs), "{fs}");
            assert!(!is_pseudo_fs(fs), "{fs}");
        }
    }
}
