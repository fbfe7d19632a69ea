//! A real PostgreSQL 15 server for a test: its own data directory and
//! socket directory in a temp dir, a private TCP port on 127.0.0.1, a
//! password for TCP logins (so a test can prove it never leaks), stopped on
//! drop. Reusable by any test that needs the platform's database (the
//! owners source today, the usage ledger next).
//!
//! Debian's binaries (`/usr/lib/postgresql/15/bin`) run as the `postgres`
//! OS user (PostgreSQL refuses to run as root) through `runuser`; the temp
//! dir is handed to that user. There is no systemd here: `pg_ctl` starts
//! the server in the background and stops it with `-m immediate` (what a
//! crash or a killed container looks like to a client). A stopped server
//! can be started again on the same data directory and port ([`Postgres::start_again`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::free_port;
use super::lab::run;

pub const BIN: &str = "/usr/lib/postgresql/15/bin";
const RUNUSER: &str = "/usr/sbin/runuser";

/// The password of the `postgres` role for TCP logins.
pub const PASSWORD: &str = "pg-Secret-7f3a9c";

/// True when a PostgreSQL server can be started here (binaries, the
/// `postgres` user, root to switch to it).
pub fn available() -> bool {
    Path::new(BIN).join("pg_ctl").exists()
        && Path::new(RUNUSER).exists()
        && rustix::process::geteuid().is_root()
        && run("/usr/bin/id", &["-u", "postgres"]).is_ok()
}

/// The lab and a PostgreSQL server can run here (else skipped, or a loud
/// failure under CI).
pub fn lab(test: &str) -> bool {
    if !super::lab_available(test) {
        return false;
    }
    if available() {
        return true;
    }
    assert!(
        !super::in_ci(),
        "{test}: PostgreSQL 15 is missing under CI=true (scripts/install-deps.sh)"
    );
    eprintln!("{test}: skipped: PostgreSQL 15 is not installed");
    false
}

/// A running (or stopped, after [`Postgres::stop`]) server.
pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    running: bool,
}

fn as_postgres(tool: &str, args: &[&str]) -> Result<String, String> {
    let bin = format!("{BIN}/{tool}");
    let mut all = vec!["-u", "postgres", "--", bin.as_str()];
    all.extend_from_slice(args);
    run(RUNUSER, &all)
}

impl Postgres {
    /// initdb + start on a free port; ~2 s. Panics (with PostgreSQL's log)
    /// if it cannot come up.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("vmscope-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        let uid: u32 = run("/usr/bin/id", &["-u", "postgres"])
            .expect("id -u postgres")
            .trim()
            .parse()
            .expect("uid");
        let gid: u32 = run("/usr/bin/id", &["-g", "postgres"])
            .expect("id -g postgres")
            .trim()
            .parse()
            .expect("gid");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
        std::fs::create_dir(dir.path().join("sock")).expect("socket dir");
        for p in [dir.path(), &pwfile, &dir.path().join("sock")] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
        }
        let data = dir.path().join("data");
        as_postgres(
            "initdb",
            &[
                "-D",
                &data.display().to_string(),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
            ],
        )
        .expect("initdb");
        let mut pg = Postgres {
            dir,
            port: 0,
            running: false,
        };
        let mut last = String::new();
        // The free port may be taken before the server binds it: retry.
        for _ in 0..3 {
            pg.port = free_port();
            match pg.pg_ctl_start() {
                Ok(()) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        // fsync off (nothing here must survive the machine), but commits
        // are written to the WAL before they are acknowledged: with
        // `synchronous_commit=off` an immediate shutdown ([`Self::stop`])
        // lost the last ~200 ms of commits, such as a test's CREATE TABLE
        // just before it stopped the server ("relation does not exist"
        // after the restart, 3 failures in 4 runs once the agent
        // attributed its VMs on the first tick).
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().join("sock").display()
        );
        as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-l",
                &self.log_file().display().to_string(),
                "-o",
                &opts,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
        .map_err(|e| format!("{e}\n--- postgres.log ---\n{}", self.log()))?;
        self.running = true;
        // `-w` waits for the socket; a login proves TCP and auth are up too.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match postgres::Client::connect(&self.url("postgres"), postgres::NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot log in: {e}\n{}", self.log()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A fresh client on `db`, as the superuser.
    pub fn client(&self, db: &str) -> postgres::Client {
        postgres::Client::connect(&self.url(db), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {db}: {e}\n{}", self.log()))
    }

    /// Creates database `db` and runs `sql` in it (a batch).
    pub fn create_db(&self, db: &str, sql: &str) {
        self.client("postgres")
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .expect("CREATE DATABASE");
        self.execute(db, sql);
    }

    /// Runs `sql` (a batch) in `db`.
    pub fn execute(&self, db: &str, sql: &str) {
        self.client(db)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e:?}\n--- postgres.log ---\n{}", self.log()));
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`): open
    /// connections drop at once.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        if let Err(e) = as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        ) {
            eprintln!("postgres: stop: {e}");
        }
    }

    /// Starts a stopped server again on the same data directory and port.
    pub fn start_again(&mut self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!("PostgreSQL did not start again: {e}");
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
