//! A PostgreSQL server of the test's own: `initdb` in a scratch directory, `postgres` on a free
//! loopback port (Debian's `postgresql` package; `.ci/run` installs it). PostgreSQL refuses to run
//! as root, so as root both run as the `postgres` user (`setpriv`, which execs: the child we hold
//! is the server itself, and killing it kills the server).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{free_port, Scratch};

pub struct PostgresServer {
    pub port: u16,
    bin: PathBuf,
    dir: Scratch,
    child: Option<Child>,
}

/// The newest installed PostgreSQL's binaries, if any.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program` with `args`, as the `postgres` user when we are root.
fn command(program: PathBuf, args: &[&str]) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

impl PostgresServer {
    /// A fresh server, or `None` (with the reason printed) where PostgreSQL is not installed.
    pub async fn start() -> Option<Self> {
        let Some(bin) = bin_dir() else {
            crate::harness::skip("PostgreSQL is not installed (apt-get install postgresql)");
            return None;
        };
        let dir = Scratch::new("postgres");
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown of the scratch directory");
        }
        let data = dir.path().join("data");
        let out =
            command(bin.join("initdb"), &["-D", data.to_str().unwrap(), "-U", "postgres", "-A", "trust", "--no-sync"])
                .stdout(Stdio::null())
                .output()
                .expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut server = Self { port: free_port(), bin, dir, child: None };
        server.spawn().await;
        Some(server)
    }

    /// Starts the server on its directory and port (again, after [`Self::stop`]).
    pub async fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let socket_dir = self.dir.path().to_str().unwrap().to_string();
        let port = self.port.to_string();
        let child = command(
            self.bin.join("postgres"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-p",
                &port,
                "-k",
                &socket_dir,
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
        self.child = Some(child);
        for _ in 0..500 {
            if tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("postgres on port {} did not come up", self.port);
    }

    /// Stops the server at once (SIGKILL: as a crash would; it recovers from its WAL on restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The postmaster's children notice it is gone and exit; wait until the port is free.
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A connection of the test's own, for asserting on rows.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
