// SPDX-License-Identifier: GPL-3.0-or-later
//! A throwaway PostgreSQL cluster for tests and benchmarks: Debian's server binaries
//! (`/usr/lib/postgresql/*/bin`, installed by `scripts/setup --postgres`), `initdb` into a
//! temporary directory, `postgres` listening on 127.0.0.1 at a free port with trust
//! authentication, stopped (and its directory removed) when the [`Cluster`] is dropped.
//!
//! initdb and the server refuse to run as root; as root (tests run so here and in CI) both
//! run as the `postgres` system user the Debian package creates, through std's
//! `Command::uid`/`gid`, and the directory is given to that user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Context, Result, bail, err};

/// A running scratch cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    server: Option<Child>,
    user: Option<(u32, u32)>,
}

/// The newest installed server's bin directory.
fn server_bin() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            err!("no PostgreSQL server in /usr/lib/postgresql ({e}): run scripts/setup --postgres")
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| {
        err!("no initdb under /usr/lib/postgresql/*/bin: run scripts/setup --postgres")
    })
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_user() -> Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .ok_or_else(|| err!("running as root needs the `postgres` user (Debian's postgresql package makes it): run scripts/setup --postgres"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// initdb and start a cluster; waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let bin = server_bin()?;
        let root = rustix::process::geteuid().is_root();
        let user = if root { Some(postgres_user()?) } else { None };
        let dir = std::env::temp_dir().join(format!(
            "mailstamp-pg-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        if let Some((uid, gid)) = user {
            rustix::fs::chown(
                &dir,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| err!("chown {}: {e}", dir.display()))?;
        }
        let data = dir.join("data");
        let mut init = Command::new(bin.join("initdb"));
        init.args([
            "-A",
            "trust",
            "-U",
            "mailstamp",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        as_user(&mut init, user);
        let out = init.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut me = Self {
            dir,
            bin,
            port: 0,
            server: None,
            user,
        };
        me.port = free_port()?;
        me.launch()?;
        Ok(me)
    }

    /// Starts the server on the cluster's port (again, after [`Cluster::stop`]).
    pub fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .arg("-k")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("server.log"))?);
        as_user(&mut cmd, self.user);
        self.server = Some(cmd.spawn().context("starting postgres")?);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = self.admin_url();
            if super::off_runtime(|| postgres::Client::connect(&url, postgres::NoTls).is_ok()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                bail!("postgres did not accept connections within 30 s: {log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: clients are cut off), keeping the data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let pid = rustix::process::Pid::from_child(&c);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
            let _ = c.wait();
        }
    }

    /// The URL of the maintenance database.
    fn admin_url(&self) -> String {
        format!("postgres://mailstamp@127.0.0.1:{}/postgres", self.port)
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> Result<String> {
        let url = self.admin_url();
        super::off_runtime(|| -> Result<()> {
            let mut c = postgres::Client::connect(&url, postgres::NoTls)?;
            c.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
            Ok(())
        })?;
        Ok(format!(
            "postgres://mailstamp@127.0.0.1:{}/{name}",
            self.port
        ))
    }

    /// The directory the cluster lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
pub(crate) mod shared {
    //! One cluster for the whole unit-test process, each test on its own database; a
    //! watcher process stops it once the test process is gone (statics are never dropped).
    use super::Cluster;
    use std::sync::{Mutex, OnceLock};

    static CLUSTER: OnceLock<Mutex<Cluster>> = OnceLock::new();

    /// A fresh database on the process's cluster.
    pub(crate) fn database() -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let c = CLUSTER.get_or_init(|| {
            let c = Cluster::start().expect("a scratch PostgreSQL (scripts/setup --postgres)");
            reap_at_exit(&c);
            Mutex::new(c)
        });
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.lock()
            .unwrap()
            .database(&format!("t{}_{n}", std::process::id()))
            .unwrap()
    }

    /// Statics are never dropped: a shell watcher stops the server and removes its
    /// directory once this process is gone.
    fn reap_at_exit(c: &Cluster) {
        let Some(server) = c.server.as_ref() else {
            return;
        };
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -INT {pg} 2>/dev/null; sleep 2; rm -rf '{dir}'",
            me = std::process::id(),
            pg = server.id(),
            dir = c.dir.display()
        );
        let _ = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}
