//! A private PostgreSQL cluster for the tests: Debian's binaries (package postgresql), a
//! fresh cluster in a temporary folder, listening on a free 127.0.0.1 port only, stopped when
//! the last test using it lets go. PostgreSQL refuses to run as root: as root the cluster is
//! run as the `postgres` user (setpriv, which execs, so the process we kill is the server).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// initdb and start-up on a busy 2-core machine take a few seconds; more is a failure.
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(10);

pub struct Cluster {
    dir: tempfile::TempDir,
    server: Mutex<Child>,
    port: u16,
    next_db: AtomicUsize,
}

/// The folder of `initdb` and `postgres`: `$HUMANLINE_PG_BINDIR`, else the newest
/// /usr/lib/postgresql/N/bin, else whatever is on the PATH.
fn bindir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HUMANLINE_PG_BINDIR") {
        return Some(PathBuf::from(d));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    Command::new("initdb")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::new())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `tool` from the PostgreSQL folder, as the postgres user when we are root.
fn pg_command(bin: &Path, tool: &str, as_postgres: bool) -> Command {
    let tool = bin.join(tool);
    if as_postgres {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--reset-env",
        ])
        .arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A cluster for `test`, shared with the tests running beside it. None (with a SKIP notice)
/// when PostgreSQL is not installed, except where it must be (CI, scripts/test.sh), where
/// that fails the test.
pub fn cluster(test: &str) -> Option<Arc<Cluster>> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = shared.upgrade() {
        return Some(c);
    }
    let Some(bin) = bindir() else {
        let msg = format!("{test}: missing PostgreSQL (package postgresql)");
        let required = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
            || std::env::var_os("HUMANLINE_REQUIRE_SIPP").is_some();
        if required {
            panic!(
                "{msg} (CI: the test environment must provide it; scripts/setup.sh installs it)"
            );
        }
        eprintln!("SKIP {msg}");
        return None;
    };
    let c = Arc::new(Cluster::start(&bin));
    *shared = Arc::downgrade(&c);
    Some(c)
}

impl Cluster {
    fn start(bin: &Path) -> Cluster {
        let as_postgres = is_root();
        let dir = tempfile::tempdir().expect("temp dir");
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster folder to postgres");
        }
        let data = dir.path().join("data");
        let out = pg_command(bin, "initdb", as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-U", "humanline", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let server = pg_command(bin, "postgres", as_postgres)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "max_connections=40", "-c", "shared_buffers=16MB"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let cluster = Cluster {
            dir,
            server: Mutex::new(server),
            port,
            next_db: AtomicUsize::new(0),
        };
        let started = Instant::now();
        loop {
            if ::postgres::Client::connect(&cluster.url("postgres"), ::postgres::NoTls).is_ok() {
                return cluster;
            }
            let exited = cluster
                .server
                .lock()
                .ok()
                .and_then(|mut s| s.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > START_LIMIT {
                panic!(
                    "PostgreSQL did not start ({exited:?} after {:?}): {}",
                    started.elapsed(),
                    cluster.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://humanline@127.0.0.1:{}/{database}?connect_timeout=5",
            self.port
        )
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let mut c = ::postgres::Client::connect(&self.url("postgres"), ::postgres::NoTls)
            .expect("connect to the cluster");
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url(&name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Cluster {
    /// A fast shutdown (SIGINT), bounded; killed if it does not stop in time.
    fn drop(&mut self) {
        let Ok(mut server) = self.server.lock() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &server.id().to_string()])
            .status();
        let asked = Instant::now();
        while asked.elapsed() < STOP_LIMIT {
            if let Ok(Some(_)) = server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = server.kill();
        let _ = server.wait();
    }
}
