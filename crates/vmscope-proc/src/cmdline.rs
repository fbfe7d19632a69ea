//! Hypervisor command lines: `/proc/<pid>/cmdline` and `comm`.
//!
//! [`split_cmdline`] turns the NUL-separated cmdline into argv.
//! [`classify_comm`] is a cheap pre-filter on the 15-byte `comm`;
//! [`classify_argv0`] confirms on `argv[0]`; [`parse_vm_cmdline`] extracts what
//! a command line says about the VM (name, UUID, vCPUs, memory, TAPs,
//! accelerator, API socket) for QEMU, Cloud Hypervisor and Firecracker.
//!
//! Nothing here fails: an option that does not parse leaves its field `None`.
//! Limitations: a VM configured over an API socket (Cloud Hypervisor without
//! `--cpus`/`--memory`, any Firecracker VM without `--config-file`) shows
//! nothing on its command line; QEMU `-readconfig` files are not read; a QEMU
//! started with `-name process=Y` has `Y` as `comm`, so [`classify_comm`]
//! misses it (callers that care must check argv of every process).

/// Which VMM a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HypervisorKind {
    Qemu,
    CloudHypervisor,
    Firecracker,
}

impl HypervisorKind {
    /// A stable lowercase name, fit for a label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HypervisorKind::Qemu => "qemu",
            HypervisorKind::CloudHypervisor => "cloud-hypervisor",
            HypervisorKind::Firecracker => "firecracker",
        }
    }
}

impl std::fmt::Display for HypervisorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Firecracker's API socket when it is started without `--api-sock`.
pub const FIRECRACKER_DEFAULT_API_SOCK: &str = "/run/firecracker.socket";

/// Split a `/proc/<pid>/cmdline` buffer into arguments: NUL-separated, one
/// trailing NUL dropped, invalid UTF-8 replaced. Empty arguments in the middle
/// are kept (they were real arguments). An empty buffer (kernel thread,
/// zombie) gives an empty vec.
pub fn split_cmdline(buf: &[u8]) -> Vec<String> {
    if buf.is_empty() {
        return Vec::new();
    }
    let body = buf.strip_suffix(b"\0").unwrap_or(buf);
    body.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Guess the VMM from `comm` (the kernel cuts it to 15 bytes, e.g.
/// `qemu-system-x86`, `cloud-hyperviso`). A trailing newline, as read from
/// `/proc/<pid>/comm`, is ignored. A hit must be confirmed with argv.
pub fn classify_comm(comm: &[u8]) -> Option<HypervisorKind> {
    let comm = comm.strip_suffix(b"\n").unwrap_or(comm);
    if (comm.starts_with(b"qemu-system-") && comm.len() > 12) || comm == b"qemu-kvm" {
        Some(HypervisorKind::Qemu)
    } else if comm.starts_with(b"cloud-hyperviso") {
        Some(HypervisorKind::CloudHypervisor)
    } else if comm.starts_with(b"firecracker") {
        Some(HypervisorKind::Firecracker)
    } else {
        None
    }
}

/// The VMM named by `argv[0]`'s basename: `qemu-system-*`, `qemu-kvm`,
/// `cloud-hypervisor` (and its `cloud-hypervisor-static*` release builds),
/// `firecracker` (and its `firecracker-vX.Y.Z-arch` release builds, but not
/// e.g. `firecracker-containerd`).
pub fn classify_argv0(arg0: &str) -> Option<HypervisorKind> {
    let base = arg0.rsplit('/').next().unwrap_or(arg0);
    if (base.starts_with("qemu-system-") && base.len() > 12) || base == "qemu-kvm" {
        Some(HypervisorKind::Qemu)
    } else if base == "cloud-hypervisor" || base.starts_with("cloud-hypervisor-static") {
        Some(HypervisorKind::CloudHypervisor)
    } else if base == "firecracker"
        || base
            .strip_prefix("firecracker-v")
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    {
        Some(HypervisorKind::Firecracker)
    } else {
        None
    }
}

/// What a hypervisor's command line says about its VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmCmdline {
    pub kind: HypervisorKind,
    /// QEMU `-name` guest name.
    pub name: Option<String>,
    /// QEMU `-uuid`, Cloud Hypervisor `--platform uuid=`.
    pub uuid: Option<String>,
    /// vCPUs at boot (QEMU `-smp`, Cloud Hypervisor `--cpus boot=`).
    pub vcpus: Option<u32>,
    /// Boot memory in bytes (QEMU `-m`, Cloud Hypervisor `--memory size=` or the sum of `--memory-zone` sizes).
    pub memory_bytes: Option<u64>,
    /// Host TAP device names, in command-line order.
    pub taps: Vec<String>,
    /// QEMU `-name debug-threads=on`: vCPU threads are named `CPU n/KVM`.
    pub debug_threads: bool,
    /// QEMU accelerator preference, `:`-separated in the order QEMU tries them
    /// (`kvm`, `kvm:tcg`), from `-accel`/`-enable-kvm` or `-machine accel=`.
    pub accel: Option<String>,
    /// Cloud Hypervisor `--api-socket` path, Firecracker `--api-sock` path.
    pub api_socket: Option<String>,
    /// Firecracker `--id`.
    pub fc_id: Option<String>,
    /// Firecracker `--config-file` path (read it with [`crate::parse_firecracker_config`]).
    pub fc_config_file: Option<String>,
    /// Firecracker `--metrics-path` (read its lines with
    /// [`crate::parse_firecracker_metrics_line`]).
    pub fc_metrics_path: Option<String>,
    /// QEMU's first QMP monitor on a unix socket that QEMU listens on
    /// (`-qmp unix:PATH,server=on`, or `-chardev socket,id=X,path=PATH,server=on`
    /// with `-mon chardev=X,mode=control`); absolute paths only, and not a
    /// `pretty=on` monitor (its replies span lines).
    pub qmp_socket: Option<String>,
}

impl VmCmdline {
    /// Nothing known yet but the hypervisor: what the parsers fill in.
    pub fn new(kind: HypervisorKind) -> Self {
        VmCmdline {
            kind,
            name: None,
            uuid: None,
            vcpus: None,
            memory_bytes: None,
            taps: Vec::new(),
            debug_threads: false,
            accel: None,
            api_socket: None,
            fc_id: None,
            fc_config_file: None,
            fc_metrics_path: None,
            qmp_socket: None,
        }
    }
}

/// Parse a hypervisor's argv; `None` when `argv[0]` is not a known VMM.
pub fn parse_vm_cmdline(args: &[String]) -> Option<VmCmdline> {
    let kind = classify_argv0(args.first()?)?;
    let opts = options(&args[1..], kind == HypervisorKind::Qemu);
    Some(match kind {
        HypervisorKind::Qemu => qemu(&opts),
        HypervisorKind::CloudHypervisor => cloud_hypervisor(&opts),
        HypervisorKind::Firecracker => firecracker(&opts),
    })
}

/// One option with its values, e.g. `("netdev", ["tap,id=n0"])`.
type Opt<'a> = (&'a str, Vec<&'a str>);

/// QEMU options whose value is taken even when it starts with `-` (QEMU
/// always consumes the next argument for these).
const QEMU_TAKES_VALUE: &[&str] = &[
    "name", "uuid", "smp", "m", "netdev", "net", "nic", "accel", "machine", "M", "append",
    "kernel", "initrd",
];

/// Split argv (without `argv[0]`) into options. `-x`, `--x` and `-x=v` are all
/// accepted. QEMU options take at most one value; Cloud Hypervisor and
/// Firecracker options take every following argument up to the next option
/// (Cloud Hypervisor's `--net a b` form).
fn options(args: &[String], qemu: bool) -> Vec<Opt<'_>> {
    let mut out: Vec<Opt<'_>> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if arg == "--" {
            break;
        }
        let Some(stripped) = arg.strip_prefix('-').filter(|s| !s.is_empty()) else {
            continue; // a positional argument (QEMU's disk image): not used
        };
        let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
        let (name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (stripped, None),
        };
        let mut values: Vec<&str> = inline.into_iter().collect();
        if qemu {
            if inline.is_none()
                && let Some(next) = args.get(i)
                && (QEMU_TAKES_VALUE.contains(&name) || !next.starts_with('-'))
            {
                values.push(next);
                i += 1;
            }
        } else {
            while let Some(next) = args.get(i).filter(|n| !n.starts_with('-')) {
                values.push(next);
                i += 1;
            }
        }
        out.push((name, values));
    }
    out
}

/// Split a QEMU option value (`tap,id=n0,ifname=t0`) into key/value pairs.
/// `,,` is a literal comma; a first element without `=` belongs to the
/// option's implied key (`-m 512` is `size=512`); a later bare `flag` is
/// `flag=on`.
fn qemu_opts(s: &str, implied: &str) -> Vec<(String, String)> {
    let mut elems = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.peek() == Some(&',') {
            chars.next();
            cur.push(',');
        } else if c == ',' {
            elems.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    elems.push(cur);
    let mut out = Vec::with_capacity(elems.len());
    for (idx, e) in elems.into_iter().enumerate() {
        if e.is_empty() {
            continue;
        }
        match e.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None if idx == 0 => out.push((implied.to_string(), e)),
            None => out.push((e, "on".to_string())),
        }
    }
    out
}

fn get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    // QEMU lets a later repetition of a key win.
    kv.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn qemu_bool(v: &str) -> bool {
    matches!(v, "on" | "yes" | "true" | "y")
}

/// Parse a size: digits with an optional fraction and an optional binary
/// suffix (`B`, `K`, `M`, `G`, `T`, `P`, `E`, any case). No suffix means
/// `default_mul` bytes per unit. Zero and overflow give `None`.
fn parse_size(s: &str, default_mul: u64) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mul: u64 = match suffix {
        "" => default_mul,
        "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => return None,
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || frac.contains('.') || frac.len() > 18 {
        return None;
    }
    let int: u128 = int.parse().ok()?;
    let mut total = int.checked_mul(u128::from(mul))?;
    if !frac.is_empty() {
        let f: u128 = frac.parse().ok()?;
        total = total.checked_add(f * u128::from(mul) / 10u128.pow(frac.len() as u32))?;
    }
    u64::try_from(total).ok().filter(|&v| v > 0)
}

fn parse_u32(s: &str) -> Option<u32> {
    s.trim().parse::<u32>().ok()
}

/// vCPUs at boot from `-smp`: `cpus` if given; otherwise QEMU uses `maxcpus`
/// when given and else the product of the topology, which QEMU requires to
/// equal `maxcpus` anyway. `maxcpus` with an explicit `cpus` is hotplug room,
/// not vCPUs.
fn qemu_smp(kv: &[(String, String)]) -> Option<u32> {
    if let Some(cpus) = get(kv, "cpus").and_then(parse_u32).filter(|&c| c > 0) {
        return Some(cpus);
    }
    const TOPO: [&str; 7] = [
        "drawers", "books", "sockets", "dies", "clusters", "modules", "cores",
    ];
    let mut any = false;
    let mut product: u32 = 1;
    for key in TOPO.iter().chain(std::iter::once(&"threads")) {
        if let Some(v) = get(kv, key).and_then(parse_u32).filter(|&v| v > 0) {
            any = true;
            product = product.checked_mul(v)?;
        }
    }
    if any {
        return Some(product);
    }
    get(kv, "maxcpus").and_then(parse_u32).filter(|&c| c > 0)
}

/// A TAP from a QEMU `-netdev`/`-nic`/`-net` value (key=value or libvirt's JSON).
fn qemu_tap(value: &str) -> Option<String> {
    if value.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        if v.get("type")?.as_str()? != "tap" {
            return None;
        }
        return v
            .get("ifname")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
    }
    let kv = qemu_opts(value, "type");
    if get(&kv, "type")? != "tap" {
        return None;
    }
    get(&kv, "ifname")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A listening unix socket path from a `-qmp`/`-chardev` value's options:
/// `server` on, a `path` that is absolute.
fn listening_unix_path(kv: &[(String, String)]) -> Option<String> {
    let server = get(kv, "server").is_some_and(qemu_bool);
    let path = get(kv, "path")?;
    (server && path.starts_with('/')).then(|| path.to_string())
}

/// The QMP socket from QEMU's monitor options (see [`VmCmdline::qmp_socket`]):
/// the first QMP monitor, in command-line order, that listens on a unix
/// socket path.
fn qemu_qmp_socket(opts: &[Opt<'_>]) -> Option<String> {
    enum Monitor {
        Path(String),
        Chardev(String),
    }
    let mut chardevs: Vec<(String, String)> = Vec::new();
    let mut monitors: Vec<Monitor> = Vec::new();
    for (name, values) in opts {
        let Some(v) = values.first().copied() else {
            continue;
        };
        match *name {
            // `-qmp unix:PATH,server=on,wait=off` (the legacy chardev form:
            // the path runs to the first comma).
            "qmp" => {
                if let Some(rest) = v.strip_prefix("unix:") {
                    let (path, flags) = rest.split_once(',').unwrap_or((rest, ""));
                    // Bare flags (`server,nowait`) follow the backend name.
                    let mut kv = qemu_opts(&format!("unix,{flags}"), "backend");
                    kv.push(("path".to_string(), path.to_string()));
                    monitors.extend(listening_unix_path(&kv).map(Monitor::Path));
                }
            }
            "chardev" => {
                let kv = qemu_opts(v, "backend");
                if get(&kv, "backend") == Some("socket")
                    && let (Some(id), Some(path)) = (get(&kv, "id"), listening_unix_path(&kv))
                {
                    chardevs.push((id.to_string(), path));
                }
            }
            "mon" => {
                let kv = qemu_opts(v, "chardev");
                let control = get(&kv, "mode") == Some("control");
                let pretty = get(&kv, "pretty").is_some_and(qemu_bool);
                if control
                    && !pretty
                    && let Some(id) = get(&kv, "chardev")
                {
                    monitors.push(Monitor::Chardev(id.to_string()));
                }
            }
            _ => {}
        }
    }
    // A chardev may be defined after the -mon that uses it: resolve at the end.
    monitors.into_iter().find_map(|m| match m {
        Monitor::Path(p) => Some(p),
        Monitor::Chardev(id) => chardevs
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, p)| p.clone()),
    })
}

fn qemu(opts: &[Opt<'_>]) -> VmCmdline {
    let mut vm = VmCmdline::new(HypervisorKind::Qemu);
    vm.qmp_socket = qemu_qmp_socket(opts);
    let mut accels: Vec<String> = Vec::new();
    let mut machine_accel: Option<String> = None;
    for (name, values) in opts {
        let value = values.first().copied();
        match (*name, value) {
            ("name", Some(v)) => {
                let kv = qemu_opts(v, "guest");
                if let Some(g) = get(&kv, "guest").filter(|g| !g.is_empty()) {
                    vm.name = Some(g.to_string());
                }
                if let Some(d) = get(&kv, "debug-threads") {
                    vm.debug_threads = qemu_bool(d);
                }
            }
            ("uuid", Some(v)) if !v.is_empty() => vm.uuid = Some(v.to_string()),
            ("smp", Some(v)) => vm.vcpus = qemu_smp(&qemu_opts(v, "cpus")).or(vm.vcpus),
            ("m", Some(v)) => {
                let kv = qemu_opts(v, "size");
                vm.memory_bytes = get(&kv, "size")
                    .and_then(|s| parse_size(s, 1 << 20))
                    .or(vm.memory_bytes);
            }
            ("netdev" | "nic" | "net", Some(v)) => vm.taps.extend(qemu_tap(v)),
            ("enable-kvm", _) => accels.push("kvm".to_string()),
            ("accel", Some(v)) => {
                if let Some(a) = get(&qemu_opts(v, "accel"), "accel") {
                    accels.extend(a.split(':').filter(|s| !s.is_empty()).map(str::to_string));
                }
            }
            ("machine" | "M", Some(v)) => {
                if let Some(a) = get(&qemu_opts(v, "type"), "accel").filter(|a| !a.is_empty()) {
                    machine_accel = Some(a.to_string());
                }
            }
            _ => {}
        }
    }
    let mut seen = std::collections::HashSet::new();
    accels.retain(|a| seen.insert(a.clone()));
    vm.accel = if accels.is_empty() {
        machine_accel
    } else {
        Some(accels.join(":"))
    };
    vm
}

/// Split a Cloud Hypervisor option value on `,`, except inside `[...]` or
/// quotes (`affinity=[0@[0-3],1@[4-5]]`).
fn ch_opts(s: &str) -> Vec<(&str, &str)> {
    fn kv(piece: &str) -> Option<(&str, &str)> {
        (!piece.is_empty()).then(|| piece.split_once('=').unwrap_or((piece, "")))
    }
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut start) = (0usize, false, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth = depth.saturating_sub(1),
            ',' if !quoted && depth == 0 => {
                out.extend(kv(&s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.extend(kv(&s[start..]));
    out
}

fn ch_get<'a>(kv: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    kv.iter()
        .rev()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.trim_matches('"'))
}

fn cloud_hypervisor(opts: &[Opt<'_>]) -> VmCmdline {
    let mut vm = VmCmdline::new(HypervisorKind::CloudHypervisor);
    let mut zones: Option<u64> = None;
    let mut size: Option<u64> = None;
    for (name, values) in opts {
        match *name {
            "cpus" => {
                for v in values {
                    let kv = ch_opts(v);
                    vm.vcpus = ch_get(&kv, "boot")
                        .and_then(parse_u32)
                        .filter(|&c| c > 0)
                        .or(vm.vcpus);
                }
            }
            "memory" => {
                for v in values {
                    // Cloud Hypervisor sizes without a suffix are bytes.
                    if let Some(s) = ch_get(&ch_opts(v), "size") {
                        size = parse_size(s, 1);
                    }
                }
            }
            "memory-zone" => {
                for v in values {
                    if let Some(z) = ch_get(&ch_opts(v), "size").and_then(|s| parse_size(s, 1)) {
                        zones = Some(zones.unwrap_or(0).saturating_add(z));
                    }
                }
            }
            "net" => {
                for v in values {
                    if let Some(t) = ch_get(&ch_opts(v), "tap").filter(|t| !t.is_empty()) {
                        vm.taps.push(t.to_string());
                    }
                }
            }
            "api-socket" => {
                if let Some(v) = values.last() {
                    let kv = ch_opts(v);
                    // Same precedence as Cloud Hypervisor: fd=, then path=, then the raw value.
                    vm.api_socket = if ch_get(&kv, "fd").is_some() {
                        None
                    } else if let Some(p) = ch_get(&kv, "path") {
                        Some(p.to_string())
                    } else {
                        Some((*v).to_string())
                    };
                }
            }
            "platform" => {
                for v in values {
                    if let Some(u) = ch_get(&ch_opts(v), "uuid").filter(|u| !u.is_empty()) {
                        vm.uuid = Some(u.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    vm.memory_bytes = size.or(zones);
    vm
}

fn firecracker(opts: &[Opt<'_>]) -> VmCmdline {
    let mut vm = VmCmdline::new(HypervisorKind::Firecracker);
    for (name, values) in opts {
        let Some(v) = values.first().filter(|v| !v.is_empty()) else {
            continue;
        };
        match *name {
            "id" => vm.fc_id = Some((*v).to_string()),
            "config-file" => vm.fc_config_file = Some((*v).to_string()),
            "metrics-path" => vm.fc_metrics_path = Some((*v).to_string()),
            "api-sock" => vm.api_socket = Some((*v).to_string()),
            _ => {}
        }
    }
    vm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    fn q(rest: &[&str]) -> VmCmdline {
        let mut a = vec!["/usr/bin/qemu-system-x86_64"];
        a.extend_from_slice(rest);
        parse_vm_cmdline(&argv(&a)).unwrap()
    }

    #[test]
    fn qemu_qmp_socket_forms() {
        let qmp = |rest: &[&str]| q(rest).qmp_socket;
        assert_eq!(
            qmp(&["-qmp", "unix:/run/vm1/qmp.sock,server=on,wait=off"]).as_deref(),
            Some("/run/vm1/qmp.sock")
        );
        assert_eq!(
            qmp(&["-qmp", "unix:/run/q.sock,server,nowait"]).as_deref(),
            Some("/run/q.sock")
        );
        // -chardev + -mon, either order; the readline monitor is not QMP.
        let chardev = "socket,id=m2,path=/run/m2.sock,server=on,wait=off";
        assert_eq!(
            qmp(&["-chardev", chardev, "-mon", "chardev=m2,mode=control"]).as_deref(),
            Some("/run/m2.sock")
        );
        assert_eq!(
            qmp(&["-mon", "chardev=m2,mode=control", "-chardev", chardev]).as_deref(),
            Some("/run/m2.sock")
        );
        assert_eq!(qmp(&["-chardev", chardev, "-mon", "chardev=m2"]), None);
        assert_eq!(
            qmp(&[
                "-chardev",
                chardev,
                "-mon",
                "chardev=m2,mode=control,pretty=on"
            ]),
            None
        );
        // The first usable monitor wins.
        assert_eq!(
            qmp(&[
                "-qmp",
                "tcp:127.0.0.1:4444,server=on",
                "-qmp",
                "unix:/a.sock,server=on",
                "-qmp",
                "unix:/b.sock,server=on"
            ])
            .as_deref(),
            Some("/a.sock")
        );
        // Not ours to connect to: client mode, relative paths, libvirt's
        // passed descriptor, TCP, stdio.
        for rest in [
            &["-qmp", "unix:/run/q.sock"][..],
            &["-qmp", "unix:q.sock,server=on"],
            &["-qmp", "stdio"],
            &["-qmp", "tcp:127.0.0.1:4444,server=on,wait=off"],
            &[
                "-chardev",
                "socket,id=charmonitor,fd=31,server=on,wait=off",
                "-mon",
                "chardev=charmonitor,id=monitor,mode=control",
            ],
            &[
                "-chardev",
                "socket,id=c,path=/run/c.sock",
                "-mon",
                "chardev=c,mode=control",
            ],
            &["-mon", "chardev=nowhere,mode=control"],
            &["-qmp"],
        ] {
            assert_eq!(qmp(rest), None, "{rest:?}");
        }
    }

    #[test]
    fn split_cmdline_forms() {
        assert_eq!(split_cmdline(b"qemu\0-m\x00512\0"), ["qemu", "-m", "512"]);
        assert_eq!(split_cmdline(b"qemu\0-m\x00512"), ["qemu", "-m", "512"]);
        assert_eq!(split_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        assert_eq!(split_cmdline(b"\xffx\0"), ["\u{fffd}x"]);
        assert_eq!(split_cmdline(b"\0"), [""]);
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn comm_classification() {
        assert_eq!(
            classify_comm(b"qemu-system-x86"),
            Some(HypervisorKind::Qemu)
        );
        assert_eq!(
            classify_comm(b"qemu-system-aar\n"),
            Some(HypervisorKind::Qemu)
        );
        assert_eq!(classify_comm(b"qemu-kvm"), Some(HypervisorKind::Qemu));
        assert_eq!(
            classify_comm(b"cloud-hyperviso"),
            Some(HypervisorKind::CloudHypervisor)
        );
        assert_eq!(
            classify_comm(b"firecracker"),
            Some(HypervisorKind::Firecracker)
        );
        for no in [
            &b"qemu-system-"[..],
            b"kvm",
            b"kvm-pit/1234",
            b"bash",
            b"",
            b"qemu-img",
            b"CPU 0/KVM",
        ] {
            assert_eq!(classify_comm(no), None, "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn argv0_classification() {
        assert_eq!(
            classify_argv0("/usr/bin/qemu-system-x86_64"),
            Some(HypervisorKind::Qemu)
        );
        assert_eq!(
            classify_argv0("qemu-system-aarch64"),
            Some(HypervisorKind::Qemu)
        );
        assert_eq!(
            classify_argv0("/usr/libexec/qemu-kvm"),
            Some(HypervisorKind::Qemu)
        );
        assert_eq!(
            classify_argv0("/usr/local/bin/cloud-hypervisor"),
            Some(HypervisorKind::CloudHypervisor)
        );
        assert_eq!(
            classify_argv0("./cloud-hypervisor-static"),
            Some(HypervisorKind::CloudHypervisor)
        );
        assert_eq!(
            classify_argv0("/firecracker"),
            Some(HypervisorKind::Firecracker)
        );
        assert_eq!(
            classify_argv0("firecracker-v1.7.0-x86_64"),
            Some(HypervisorKind::Firecracker)
        );
        for no in [
            "firecracker-containerd",
            "/usr/bin/qemu-img",
            "ch-remote",
            "qemu-system-",
            "",
            "/",
            "kvm",
        ] {
            assert_eq!(classify_argv0(no), None, "{no}");
        }
        assert_eq!(parse_vm_cmdline(&argv(&["/bin/bash", "-m", "512"])), None);
        assert_eq!(parse_vm_cmdline(&[]), None);
    }

    #[test]
    fn qemu_name_forms() {
        let vm = q(&["-name", "guest=instance-00000001,debug-threads=on"]);
        assert_eq!(vm.name.as_deref(), Some("instance-00000001"));
        assert!(vm.debug_threads);
        let vm = q(&["-name", "plain"]);
        assert_eq!(vm.name.as_deref(), Some("plain"));
        assert!(!vm.debug_threads);
        assert_eq!(
            q(&["-name", "web,process=qemu-web"]).name.as_deref(),
            Some("web")
        );
        assert_eq!(
            q(&["-name", "a,,b,debug-threads=off"]).name.as_deref(),
            Some("a,b")
        );
        assert_eq!(
            q(&["-name", "guest=x,,y,,,debug-threads=on"])
                .name
                .as_deref(),
            Some("x,y,")
        );
        assert_eq!(q(&["-name=single"]).name.as_deref(), Some("single"));
        assert_eq!(q(&["--name", "double"]).name.as_deref(), Some("double"));
        // The value is taken even when it starts with '-'.
        assert_eq!(
            q(&["-name", "-odd", "-m", "64"]).name.as_deref(),
            Some("-odd")
        );
        assert_eq!(q(&["-name"]).name, None);
        assert_eq!(q(&["-name", "guest=,debug-threads=on"]).name, None);
    }

    #[test]
    fn qemu_uuid() {
        let vm = q(&["-uuid", "c7a5fdbd-cdaf-9455-926a-d65c16db1809"]);
        assert_eq!(
            vm.uuid.as_deref(),
            Some("c7a5fdbd-cdaf-9455-926a-d65c16db1809")
        );
        assert_eq!(q(&["-uuid=u1"]).uuid.as_deref(), Some("u1"));
    }

    #[test]
    fn qemu_smp_forms() {
        assert_eq!(q(&["-smp", "4"]).vcpus, Some(4));
        assert_eq!(
            q(&["-smp", "cpus=4,sockets=1,cores=4,threads=1"]).vcpus,
            Some(4)
        );
        assert_eq!(q(&["-smp", "sockets=2,cores=2,threads=2"]).vcpus, Some(8));
        assert_eq!(q(&["-smp", "2,maxcpus=8"]).vcpus, Some(2));
        assert_eq!(q(&["-smp", "cpus=1,maxcpus=16,sockets=16"]).vcpus, Some(1));
        assert_eq!(q(&["-smp", "maxcpus=6"]).vcpus, Some(6));
        assert_eq!(q(&["-smp=3"]).vcpus, Some(3));
        assert_eq!(q(&["-smp", "lots"]).vcpus, None);
        assert_eq!(q(&[]).vcpus, None);
    }

    #[test]
    fn qemu_memory_forms() {
        const MIB: u64 = 1 << 20;
        assert_eq!(q(&["-m", "512"]).memory_bytes, Some(512 * MIB));
        assert_eq!(q(&["-m", "2G"]).memory_bytes, Some(2048 * MIB));
        assert_eq!(q(&["-m", "512M"]).memory_bytes, Some(512 * MIB));
        assert_eq!(q(&["-m", "512m"]).memory_bytes, Some(512 * MIB));
        assert_eq!(
            q(&["-m", "size=1048576k,slots=4,maxmem=8G"]).memory_bytes,
            Some(1024 * MIB)
        );
        assert_eq!(q(&["-m", "1T"]).memory_bytes, Some(1 << 40));
        assert_eq!(q(&["-m", "1.5G"]).memory_bytes, Some(1536 * MIB));
        assert_eq!(q(&["-m=64"]).memory_bytes, Some(64 * MIB));
        assert_eq!(q(&["-m", "12Q"]).memory_bytes, None);
        assert_eq!(q(&["-m", "99999999999999999999"]).memory_bytes, None);
        assert_eq!(q(&["-m", "0"]).memory_bytes, None);
    }

    #[test]
    fn qemu_tap_forms() {
        let vm = q(&[
            "-netdev",
            "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device",
            "rtl8139,netdev=n0",
            "-net",
            "tap,ifname=tap1",
            "-net",
            "nic",
            "-netdev",
            r#"{"type":"tap","ifname":"vnet0","script":"","downscript":"","id":"hostnet0"}"#,
            "-netdev",
            r#"{"type":"tap","fd":"34","vhost":true,"vhostfd":"36","id":"hostnet1"}"#,
            "-netdev",
            "tap,fd=25,id=hostnet2",
            "-netdev",
            "user,id=u0",
            "-nic",
            "tap,ifname=tap2",
            "-netdev",
            "{not json",
        ]);
        assert_eq!(vm.taps, ["tap0", "tap1", "vnet0", "tap2"]);
    }

    #[test]
    fn qemu_accel_forms() {
        assert_eq!(q(&["-enable-kvm"]).accel.as_deref(), Some("kvm"));
        assert_eq!(q(&["-accel", "kvm"]).accel.as_deref(), Some("kvm"));
        assert_eq!(
            q(&["-accel", "tcg,tb-size=16"]).accel.as_deref(),
            Some("tcg")
        );
        assert_eq!(
            q(&["-accel", "kvm", "-accel", "tcg"]).accel.as_deref(),
            Some("kvm:tcg")
        );
        assert_eq!(
            q(&["-machine", "pc,accel=kvm"]).accel.as_deref(),
            Some("kvm")
        );
        assert_eq!(
            q(&["-M", "q35,accel=kvm:tcg"]).accel.as_deref(),
            Some("kvm:tcg")
        );
        assert_eq!(
            q(&["-enable-kvm", "-accel", "kvm"]).accel.as_deref(),
            Some("kvm")
        );
        assert_eq!(q(&["-machine", "pc"]).accel, None);
    }

    #[test]
    fn qemu_lab_command_line() {
        let vm = q(&[
            "-enable-kvm",
            "-machine",
            "pc",
            "-m",
            "32",
            "-bios",
            "hlt.rom",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-monitor",
            "none",
            "-pidfile",
            "X.pid",
            "-daemonize",
            "-name",
            "lab1",
        ]);
        assert_eq!(vm.kind, HypervisorKind::Qemu);
        assert_eq!(vm.name.as_deref(), Some("lab1"));
        assert_eq!(vm.memory_bytes, Some(32 << 20));
        assert_eq!(vm.accel.as_deref(), Some("kvm"));
    }

    #[test]
    fn libvirt_qemu_command_line() {
        let vm = q(&[
            "-name",
            "guest=instance-00000002,debug-threads=on",
            "-S",
            "-object",
            r#"{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/libvirt/qemu/domain-2-instance-00000002/master-key.aes"}"#,
            "-machine",
            "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
            "-accel",
            "kvm",
            "-cpu",
            "qemu64",
            "-m",
            "size=2097152k",
            "-object",
            r#"{"qom-type":"memory-backend-ram","id":"pc.ram","size":2147483648}"#,
            "-overcommit",
            "mem-lock=off",
            "-smp",
            "2,sockets=2,cores=1,threads=1",
            "-uuid",
            "0f6e1c2e-4c1a-4a51-9a8e-2f4b7f0c1a11",
            "-no-user-config",
            "-nodefaults",
            "-netdev",
            r#"{"type":"tap","ifname":"tap-lv0","script":"","downscript":"","id":"hostnet0"}"#,
            "-device",
            r#"{"driver":"rtl8139","netdev":"hostnet0","id":"net0","mac":"52:54:00:12:34:56"}"#,
        ]);
        assert_eq!(vm.name.as_deref(), Some("instance-00000002"));
        assert!(vm.debug_threads);
        assert_eq!(vm.vcpus, Some(2));
        assert_eq!(vm.memory_bytes, Some(2 << 30));
        assert_eq!(
            vm.uuid.as_deref(),
            Some("0f6e1c2e-4c1a-4a51-9a8e-2f4b7f0c1a11")
        );
        assert_eq!(vm.taps, ["tap-lv0"]);
        assert_eq!(vm.accel.as_deref(), Some("kvm"));
    }

    fn ch(rest: &[&str]) -> VmCmdline {
        let mut a = vec!["/usr/local/bin/cloud-hypervisor"];
        a.extend_from_slice(rest);
        parse_vm_cmdline(&argv(&a)).unwrap()
    }

    #[test]
    fn cloud_hypervisor_forms() {
        let vm = ch(&[
            "--api-socket",
            "/run/ch/vm1.sock",
            "--kernel",
            "/vmlinux",
            "--cmdline",
            "console=ttyS0",
            "--cpus",
            "boot=2,max=4,affinity=[0@[0-1],1@[2-3]]",
            "--memory",
            "size=1G,shared=on",
            "--net",
            "tap=t0,mac=12:34:56:78:90:ab",
            "tap=t1,mac=x",
            "--disk",
            "path=/a.img",
            "--platform",
            "uuid=3f1c0e9a-1111-2222-3333-444455556666",
        ]);
        assert_eq!(vm.kind, HypervisorKind::CloudHypervisor);
        assert_eq!(vm.vcpus, Some(2));
        assert_eq!(vm.memory_bytes, Some(1 << 30));
        assert_eq!(vm.taps, ["t0", "t1"]);
        assert_eq!(vm.api_socket.as_deref(), Some("/run/ch/vm1.sock"));
        assert_eq!(
            vm.uuid.as_deref(),
            Some("3f1c0e9a-1111-2222-3333-444455556666")
        );
        assert_eq!(vm.name, None);

        assert_eq!(ch(&["--memory", "size=1024M"]).memory_bytes, Some(1 << 30));
        assert_eq!(
            ch(&["--memory=size=536870912"]).memory_bytes,
            Some(512 << 20)
        );
        assert_eq!(
            ch(&[
                "--memory",
                "size=0",
                "--memory-zone",
                "id=m0,size=1G",
                "id=m1,size=512M"
            ])
            .memory_bytes,
            Some(1536 << 20)
        );
        assert_eq!(
            ch(&["--api-socket", "path=/x.sock"]).api_socket.as_deref(),
            Some("/x.sock")
        );
        assert_eq!(ch(&["--api-socket", "fd=3"]).api_socket, None);
        assert_eq!(ch(&["--net", "fd=3,mac=x"]).taps, Vec::<String>::new());
        assert_eq!(ch(&["--net", "tap=a", "--net", "tap=b"]).taps, ["a", "b"]);
        assert_eq!(ch(&["--cpus", "boot=x"]).vcpus, None);
        assert_eq!(ch(&[]).vcpus, None);
    }

    #[test]
    fn firecracker_forms() {
        let a = argv(&[
            "/usr/bin/firecracker",
            "--id",
            "vm-7",
            "--start-time-us",
            "123",
            "--config-file",
            "/srv/jailer/firecracker/vm-7/root/config.json",
            "--api-sock",
            "/run/fc-7.sock",
        ]);
        let vm = parse_vm_cmdline(&a).unwrap();
        assert_eq!(vm.kind, HypervisorKind::Firecracker);
        assert_eq!(vm.fc_id.as_deref(), Some("vm-7"));
        assert_eq!(
            vm.fc_config_file.as_deref(),
            Some("/srv/jailer/firecracker/vm-7/root/config.json")
        );
        assert_eq!(vm.api_socket.as_deref(), Some("/run/fc-7.sock"));
        let vm =
            parse_vm_cmdline(&argv(&["firecracker", "--no-api", "--config-file=/c.json"])).unwrap();
        assert_eq!(vm.fc_config_file.as_deref(), Some("/c.json"));
        assert_eq!(vm.api_socket, None);
        assert_eq!(vm.fc_metrics_path, None);
        let vm = parse_vm_cmdline(&argv(&[
            "firecracker",
            "--metrics-path",
            "/run/fc/vm-7.metrics",
        ]))
        .unwrap();
        assert_eq!(vm.fc_metrics_path.as_deref(), Some("/run/fc/vm-7.metrics"));
    }

    #[test]
    fn size_parser() {
        assert_eq!(parse_size("1", 1), Some(1));
        assert_eq!(parse_size("16E", 1), None); // 2^64 overflows
        assert_eq!(parse_size("15E", 1), Some(15 << 60));
        assert_eq!(parse_size(".5G", 1), None);
        assert_eq!(parse_size("1.2.3G", 1), None);
        assert_eq!(parse_size("0.5K", 1), Some(512));
        assert_eq!(parse_size("", 1), None);
        assert_eq!(parse_size("1KiB", 1), None);
    }
}
