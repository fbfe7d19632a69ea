//! Lab pieces on the host: firmware ROMs, TAP devices, QEMU processes, raw
//! frame injection and a running `vmscope serve`.
//!
//! Every piece is a guard: dropping it deletes the TAP, kills the VM (and
//! waits until its PID is really gone) or stops the agent, also while a test
//! panics. If a test fails, the agent's stderr is printed on drop.
//!
//! The VMs boot no OS (see shared/LAB.md): the "BIOS" is a 64 KiB ROM whose
//! reset vector (the last 16 bytes, mapped at 0xFFFFFFF0) runs either `HLT`
//! (an idle VM: 0% CPU, ~20 MB RSS) or `jmp $` (a VM burning one core).

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

use super::{IP, PYTHON, QEMU, free_port, http, metrics::Exposition, next_serial, poll_until};

/// Runs a command to completion; an error carries its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the guest's CPU does: the whole ROM is filled with one instruction,
/// so whichever offset the reset vector lands on executes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// `F4` (HLT): the vCPU halts and the VM idles.
    Idle,
    /// `EB FE` (`jmp $`): the vCPU spins, one host core per VM.
    Busy,
}

/// A temp dir holding both ROMs; VMs keep their pidfiles here too.
pub struct Roms {
    dir: TempDir,
}

impl Roms {
    pub fn new() -> Roms {
        let dir = tempfile::Builder::new()
            .prefix("vmscope-e2e-")
            .tempdir()
            .expect("create temp dir for ROMs");
        fs::write(dir.path().join("hlt.rom"), vec![0xF4u8; 64 * 1024]).expect("write hlt.rom");
        fs::write(
            dir.path().join("busy.rom"),
            [0xEBu8, 0xFE].repeat(32 * 1024),
        )
        .expect("write busy.rom");
        Roms { dir }
    }

    pub fn path(&self, fw: Firmware) -> PathBuf {
        self.dir.path().join(match fw {
            Firmware::Idle => "hlt.rom",
            Firmware::Busy => "busy.rom",
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A TAP device, up, deleted on drop. Named `vst<pid>n<serial>` (at most 14
/// bytes, under IFNAMSIZ) so parallel tests and test processes (nextest runs
/// one per test) never collide.
pub struct Tap {
    pub name: String,
}

impl Tap {
    pub fn new() -> Tap {
        let name = format!("vst{}n{}", std::process::id(), next_serial());
        assert!(name.len() <= 15, "TAP name {name} longer than IFNAMSIZ-1");
        // A leftover from an earlier, killed process that had our pid would
        // make `add` fail; no live process but us has this pid, so it is
        // safe to remove.
        if Path::new("/sys/class/net").join(&name).exists() {
            let _ = run(IP, &["link", "del", &name]);
        }
        run(IP, &["tuntap", "add", "dev", &name, "mode", "tap"]).expect("create TAP");
        let tap = Tap { name };
        run(IP, &["link", "set", &tap.name, "up"]).expect("set TAP up");
        tap
    }

    /// The host-side counter `tx_packets` etc. from sysfs.
    pub fn host_counter(&self, counter: &str) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/{counter}", self.name);
        fs::read_to_string(&path)
            .map_err(|e| format!("{path}: {e}"))
            .and_then(|s| s.trim().parse().map_err(|e| format!("{path}: {e}")))
            .expect("read TAP counter")
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Err(e) = run(IP, &["link", "del", &self.name]) {
            eprintln!("lab: deleting TAP {}: {e}", self.name);
        }
    }
}

/// True when KVM can be opened; otherwise VMs run under TCG.
pub fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// What the VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// The spec's firmware ROM as the BIOS (no OS, no disk access).
    Rom,
    /// QEMU's own SeaBIOS, which boots from the first disk given in the
    /// extra arguments (reading its boot sector through the disk's device).
    SeaBios,
    /// A Linux kernel given in the extra arguments (`-kernel`, `-initrd`),
    /// always under TCG: a real guest kernel under this lab's nested KVM
    /// crawls and hangs (shared/LAB.md).
    Linux,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub uuid: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub firmware: Firmware,
    /// `-name ...,process=X`: QEMU renames its process (comm) to X.
    pub process_name: Option<String>,
}

/// A daemonized QEMU process, killed on drop.
pub struct QemuVm {
    pub spec: VmSpec,
    pub pid: i32,
    killed: bool,
}

impl QemuVm {
    /// Starts QEMU the way LAB.md measured it: ROM as BIOS, no display, no
    /// default devices, an rtl8139 on `tap` (so the TAP's counters move when
    /// QEMU reads frames), `-daemonize` with a pidfile.
    pub fn start(roms: &Roms, spec: VmSpec, tap: Option<&Tap>) -> QemuVm {
        QemuVm::start_with(roms, spec, tap, Boot::Rom, &[])
    }

    /// [`QemuVm::start`] booting as `boot` says, with `extra` arguments
    /// (disks, a balloon, QMP sockets) before `-daemonize`.
    pub fn start_with(
        roms: &Roms,
        spec: VmSpec,
        tap: Option<&Tap>,
        boot: Boot,
        extra: &[String],
    ) -> QemuVm {
        let pidfile = roms.dir().join(format!("{}.pid", spec.name));
        let rom = roms.path(spec.firmware);
        let accel = if boot == Boot::Linux {
            "tcg,tb-size=16"
        } else if kvm_usable() {
            "kvm"
        } else {
            "tcg"
        };
        let mut args: Vec<String> = [
            "-accel",
            accel,
            "-machine",
            "pc",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if boot == Boot::Rom {
            args.extend(["-bios".to_owned(), rom.display().to_string()]);
        }
        args.extend([
            "-name".to_owned(),
            match &spec.process_name {
                Some(p) => format!("guest={},process={p},debug-threads=on", spec.name),
                None => format!("guest={},debug-threads=on", spec.name),
            },
            "-uuid".to_owned(),
            spec.uuid.clone(),
            "-smp".to_owned(),
            spec.vcpus.to_string(),
            "-m".to_owned(),
            spec.memory_mib.to_string(),
        ]);
        if let Some(tap) = tap {
            args.extend([
                "-netdev".to_owned(),
                format!("tap,id=n0,ifname={},script=no,downscript=no", tap.name),
                "-device".to_owned(),
                "rtl8139,netdev=n0".to_owned(),
            ]);
        }
        args.extend(extra.iter().cloned());
        args.extend([
            "-pidfile".to_owned(),
            pidfile.display().to_string(),
            "-daemonize".to_owned(),
        ]);
        // With -daemonize the process we run exits once the VM is up; the VM
        // lives on, reparented, and is known to us by its pidfile.
        let out = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run qemu");
        assert!(
            out.status.success(),
            "qemu {} failed: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let pid: i32 = fs::read_to_string(&pidfile)
            .expect("read qemu pidfile")
            .trim()
            .parse()
            .expect("pid in qemu pidfile");
        QemuVm {
            spec,
            pid,
            killed: false,
        }
    }

    /// True while our PID still runs this VM (not a zombie, not a reused
    /// PID): its command line names our guest.
    fn is_ours(&self) -> bool {
        let needle = format!("guest={},", self.spec.name);
        pid_alive(self.pid)
            && fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(needle.as_bytes()))
            })
    }

    /// Sends `sig` and waits until the process is gone from /proc. A killed
    /// daemonized QEMU stays a zombie (state Z) for a while until its new
    /// parent reaps it; we are not its parent, so we wait.
    pub fn kill_and_wait(&mut self, sig: Signal) {
        self.signal(sig);
        let gone = poll_until(Duration::from_secs(15), Duration::from_millis(20), || {
            (!pid_present(self.pid)).then_some(())
        });
        if gone.is_none() {
            eprintln!(
                "lab: qemu pid {} ({}) still present 15 s after kill",
                self.pid, self.spec.name
            );
        }
    }

    /// Sends `sig` if the PID is still this VM; marks the VM as killed.
    fn signal(&mut self, sig: Signal) {
        self.killed = true;
        let Some(pid) = Pid::from_raw(self.pid) else {
            return;
        };
        if !self.is_ours() {
            return;
        }
        if let Err(e) = kill_process(pid, sig) {
            eprintln!("lab: kill {} ({}): {e}", self.pid, self.spec.name);
        }
    }
}

impl Drop for QemuVm {
    /// Kills the VM and waits until it no longer runs. Waiting for the
    /// zombie to be reaped as well (as `kill_and_wait` does) would add ~1-2 s
    /// per VM to every test for nothing: a zombie holds no TAP or memory.
    fn drop(&mut self) {
        if self.killed {
            return;
        }
        self.signal(Signal::KILL);
        let stopped = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            (!pid_alive(self.pid)).then_some(())
        });
        if stopped.is_none() {
            eprintln!(
                "lab: qemu pid {} ({}) still running 10 s after SIGKILL",
                self.pid, self.spec.name
            );
        }
    }
}

/// `/proc/PID/stat` state, `None` when the PID does not exist.
fn pid_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the last ')' (comm may contain anything).
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn pid_present(pid: i32) -> bool {
    pid_state(pid).is_some()
}

/// CPU seconds (user + system, all threads) of a process, straight from
/// `/proc/PID/stat`: the ground truth to compare the agent with.
pub fn proc_cpu_seconds(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the last ')': state is field 3, utime 14, stime 15.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Present and not a zombie (a zombie no longer runs a VM).
pub fn pid_alive(pid: i32) -> bool {
    pid_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

/// Sends `count` raw Ethernet frames of `size` bytes (ethertype 0x88B5) out of
/// the TAP's host side: QEMU reads them, so the guest *receives* them.
pub fn inject_frames(tap: &Tap, count: u32, size: u32) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/tools/inject_frames.py"
    );
    let out = run(
        PYTHON,
        &[script, &tap.name, &count.to_string(), &size.to_string()],
    )
    .expect("inject frames");
    assert!(
        out.contains(&format!("sent {count} frames")),
        "inject_frames said: {out}"
    );
}

/// One tick as the agent published it.
pub struct Snapshot {
    pub seq: u64,
    pub collected_at: std::time::SystemTime,
    pub metrics: Exposition,
}

/// A running `vmscope serve` on a loopback port; killed on drop.
pub struct Agent {
    pub base: String,
    child: Child,
    log: Arc<Mutex<String>>,
    /// The agent's own state database: never the host's /var/lib/vmscope,
    /// whose lock another agent (or a developer's) may hold. `None` when
    /// the test gave a directory ([`Agent::start_in`]) that outlives it.
    _state: Option<tempfile::TempDir>,
    /// Where `state.db` (and the config file) are.
    state_dir: PathBuf,
}

impl Agent {
    /// Starts the agent with `--interval interval_secs` on a free loopback
    /// port and waits until `/healthz` answers 200. Retries a few ports in
    /// case another process took the free one first.
    pub fn start(interval_secs: u64) -> Agent {
        Agent::start_with(interval_secs, "")
    }

    /// [`Agent::start`] with `config` (TOML) as its config file (`-c`),
    /// e.g. an `[owners.*]` source.
    pub fn start_with(interval_secs: u64, config: &str) -> Agent {
        Agent::start_with_state(interval_secs, config, None)
    }

    /// [`Agent::start_with`] keeping its state in `state_dir` (`state.db`
    /// there), so that a second agent started on the same directory takes
    /// over the first one's database (restarts, crashes).
    pub fn start_in(interval_secs: u64, config: &str, state_dir: &Path) -> Agent {
        Agent::start_with_state(interval_secs, config, Some(state_dir))
    }

    fn start_with_state(interval_secs: u64, config: &str, state_dir: Option<&Path>) -> Agent {
        let mut last_err = String::new();
        for _ in 0..3 {
            match Agent::try_start(interval_secs, config, state_dir) {
                Ok(agent) => return agent,
                Err(e) => last_err = e,
            }
        }
        panic!("vmscope serve did not come up: {last_err}");
    }

    fn try_start(
        interval_secs: u64,
        config: &str,
        state_dir: Option<&Path>,
    ) -> Result<Agent, String> {
        let addr = format!("127.0.0.1:{}", free_port());
        let (state, state_dir) = match state_dir {
            Some(d) => (None, d.to_path_buf()),
            None => {
                let t = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let config_file = if config.is_empty() {
            None
        } else {
            let path = state_dir.join("vmscope.toml");
            std::fs::write(&path, config).map_err(|e| format!("write config: {e}"))?;
            Some(path)
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmscope"));
        // Hermetic: no VMSCOPE_* settings leak in from the developer's shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VMSCOPE_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .args([
                "serve",
                "--listen",
                &addr,
                "--interval",
                &interval_secs.to_string(),
            ])
            .args(
                config_file
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("-c"), p.as_os_str()]),
            )
            // VMSCOPE_TEST_LOG raises it when chasing a failure, e.g.
            // "info,vmscope::pipeline=debug".
            .env(
                "VMSCOPE_LOG",
                std::env::var("VMSCOPE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("VMSCOPE_STORE__PATH", state_dir.join("state.db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn vmscope: {e}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let mut agent = Agent {
            base: format!("http://{addr}"),
            child,
            log,
            _state: state,
            state_dir,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Err(format!(
                    "vmscope serve exited with {status}: {}",
                    agent.log()
                ));
            }
            if http::get(&agent.url("/healthz")).is_ok_and(|r| r.status == 200) {
                return Ok(agent);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("no 200 from /healthz within 30 s: {}", agent.log()))
    }

    /// The agent's state database (`VMSCOPE_STORE__PATH`).
    pub fn state_db(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    /// Sends `sig` (TERM: the graceful path; KILL: a crash), waits at most
    /// 15 s for the process to exit and returns its log.
    pub fn stop(mut self, sig: Signal) -> String {
        if let Some(pid) = Pid::from_raw(self.child.id() as i32) {
            let _ = kill_process(pid, sig);
        }
        let exited = poll_until(Duration::from_secs(15), Duration::from_millis(20), || {
            self.child.try_wait().ok().flatten()
        });
        assert!(
            exited.is_some(),
            "vmscope still running 15 s after {sig:?}: {}",
            self.log()
        );
        // The stderr reader ends with the pipe.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn metrics(&self) -> Exposition {
        let resp = http::get(&self.url("/metrics")).expect("GET /metrics");
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body);
        // Prometheus' default scrape format unless OpenMetrics is asked for.
        assert!(
            resp.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("text/plain")),
            "GET /metrics content type {:?}",
            resp.content_type
        );
        Exposition::parse(&resp.body).expect("parse /metrics")
    }

    /// `/metrics` as of one known tick: fetched between two `/api/v1/vms`
    /// reads that agree on `seq`. `None` if a tick landed in between.
    pub fn consistent_snapshot(&self) -> Option<Snapshot> {
        let head = |v: &serde_json::Value| {
            let seq = v.get("seq")?.as_u64()?;
            let at = humantime::parse_rfc3339(v.get("collected_at")?.as_str()?).ok()?;
            Some((seq, at))
        };
        let before = http::get_json(&self.url("/api/v1/vms")).expect("GET /api/v1/vms");
        let (seq, collected_at) = head(&before).unwrap_or_else(|| {
            panic!("/api/v1/vms lacks seq or an RFC 3339 collected_at: {before}")
        });
        let metrics = self.metrics();
        let after = http::get_json(&self.url("/api/v1/vms")).expect("GET /api/v1/vms");
        (head(&after)?.0 == seq).then_some(Snapshot {
            seq,
            collected_at,
            metrics,
        })
    }

    /// `GET /api/v1/vms` -> the `vms` array.
    pub fn api_vms(&self) -> Vec<serde_json::Value> {
        let body = http::get_json(&self.url("/api/v1/vms")).expect("GET /api/v1/vms");
        body.get("vms")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_else(|| panic!("/api/v1/vms has no \"vms\" array: {body}"))
    }

    /// The API's VM objects whose `id` is `id`.
    pub fn api_vms_with_id(&self, id: &str) -> Vec<serde_json::Value> {
        self.api_vms()
            .into_iter()
            .filter(|vm| vm.get("id").and_then(|v| v.as_str()) == Some(id))
            .collect()
    }

    /// Waits (up to `timeout`) until `/metrics` has a sample `name` with `labels`.
    pub fn wait_for_series(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
    ) -> Exposition {
        poll_until(timeout, Duration::from_millis(100), || {
            let e = self.metrics();
            (!e.all(name, labels).is_empty()).then_some(e)
        })
        .map(|(e, _)| e)
        .unwrap_or_else(|| {
            panic!(
                "{name}{labels:?} not in /metrics within {timeout:?}; agent log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- vmscope serve stderr ({}) ---\n{}",
                self.base,
                self.log()
            );
        }
    }
}
