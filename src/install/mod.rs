//! `connectivity-agent install` and `uninstall`: put the agent on a host as a
//! hardened systemd service, upgrade it in place, take it off again.
//!
//! Every step is printed; `--dry-run` prints them and changes nothing. Steps
//! check before they act, so running install twice is safe and running it
//! with a new binary is the upgrade (config and state are kept, the service
//! is restarted). `--root DIR` installs into another tree (an image being
//! built): the service user is created in that tree's user database, files
//! are chowned to its uid there, and systemctl is not run.
//!
//! Layout (docs/INSTALL.md, docs/SECURITY.md):
//!
//! | path | mode | owner |
//! |---|---|---|
//! | /usr/local/bin/connectivity-agent | 0755 | root |
//! | /etc/systemd/system/connectivity-agent.service | 0644 | root |
//! | /etc/connectivity-agent/ | 0700 | connectivity-agent |
//! | /etc/connectivity-agent/InstallerProfile.cfg | 0600 | connectivity-agent |
//! | /var/lib/connectivity-agent/ (+ credentials 0600) | 0700 | connectivity-agent |

mod user;

use crate::config::{self, ConfigError, DEFAULT_STATE_DIR, Profile, SECRET_KEYS};
use crate::credentials::{self, CREDENTIALS_FILE, write_file_atomically};
use anyhow::{Context, bail};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use user::Ids;

/// The system user (and group) the service runs as.
pub const SERVICE_USER: &str = "connectivity-agent";
pub const UNIT_NAME: &str = "connectivity-agent.service";
/// The unit, built into the binary so the binary alone can install itself.
pub const UNIT_FILE: &str = include_str!("../../systemd/connectivity-agent.service");
pub const BINARY_PATH: &str = "/usr/local/bin/connectivity-agent";
pub const CONFIG_DIR: &str = "/etc/connectivity-agent";
pub const PROFILE_PATH: &str = "/etc/connectivity-agent/InstallerProfile.cfg";
pub const UNIT_PATH: &str = "/etc/systemd/system/connectivity-agent.service";

/// Install or upgrade the agent as a hardened systemd service.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// The InstallerProfile.cfg to install; it is validated first.
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
    /// Install into this directory tree instead of the running system
    /// (systemctl is only run when this is /).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print every action and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The agent binary to install [default: this executable].
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Enable the service but do not (re)start it.
    #[arg(long)]
    pub no_start: bool,
    /// Overwrite an installed profile that differs from --config (by default
    /// it is kept: after the first start it holds blanked secrets).
    #[arg(long)]
    pub replace_config: bool,
}

/// Stop and remove the service; keep profile and state unless --purge.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// Uninstall from this directory tree instead of the running system.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Print every action and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the profile, the state directory (stored credentials
    /// included) and the service user.
    #[arg(long)]
    pub purge: bool,
}

/// Exit code for an error of [`install`] or [`uninstall`]: 64 (EX_USAGE) when
/// the profile is invalid, 1 for anything else.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<ConfigError>().is_some() {
        config::EX_USAGE
    } else {
        1
    }
}

/// Install or upgrade, printing each step to stdout.
pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    install_to(args, &mut io::stdout().lock())
}

/// Uninstall, printing each step to stdout.
pub fn uninstall(args: &UninstallArgs) -> anyhow::Result<()> {
    uninstall_to(args, &mut io::stdout().lock())
}

/// [`install`], printing to `out`: validate, read the binary, create the
/// service user, lay out the files, then enable and start the unit.
pub fn install_to(args: &InstallArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let t = Target::new(&args.root)?;
    let mut steps = Steps {
        out,
        dry_run: args.dry_run,
        changed: false,
    };
    if !args.dry_run {
        require_root("install")?;
    }
    let profile = validate_profile(&args.config, &t, &mut steps)?;
    let binary = read_binary(args)?;
    let service = Owner {
        name: SERVICE_USER,
        ids: ensure_service_user(args, &t, &mut steps)?,
    };
    install_files(args, &t, &profile, service, &binary, &mut steps)?;
    start_service(args, &t, &mut steps)
}

/// The binary to install: `--binary`, or this executable.
fn read_binary(args: &InstallArgs) -> anyhow::Result<Vec<u8>> {
    let binary_src = match &args.binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot tell where this executable is; pass --binary")?,
    };
    fs::read(&binary_src)
        .with_context(|| format!("cannot read the binary {}", binary_src.display()))
}

/// The service user's ids, creating the user when it is missing (`None`
/// in a dry run that would create it).
fn ensure_service_user(
    args: &InstallArgs,
    t: &Target,
    steps: &mut Steps,
) -> anyhow::Result<Option<Ids>> {
    if !t.on_host {
        // useradd --prefix needs <root>/etc to write the user database into.
        steps.ensure_dir(&t.path("/etc"), 0o755, ROOT, false)?;
    }
    if let Some(ids) = user::lookup(&t.root, t.on_host, SERVICE_USER)? {
        steps.say(format_args!(
            "ok: system user {SERVICE_USER} exists (uid {}, gid {}){}",
            ids.uid,
            ids.gid,
            t.where_()
        ))?;
        return Ok(Some(ids));
    }
    steps.act(
        format!("create system user {SERVICE_USER} (own group, no login shell, home {DEFAULT_STATE_DIR}){}", t.where_()),
        || user::create(&t.root, t.on_host, SERVICE_USER, DEFAULT_STATE_DIR),
    )?;
    if args.dry_run {
        return Ok(None);
    }
    Ok(Some(
        user::lookup(&t.root, t.on_host, SERVICE_USER)?
            .context("useradd succeeded but the user is not there")?,
    ))
}

/// Directories, binary, profile, stored credentials and unit file.
fn install_files(
    args: &InstallArgs,
    t: &Target,
    profile: &Profile,
    service: Owner,
    binary: &[u8],
    steps: &mut Steps,
) -> anyhow::Result<()> {
    steps.ensure_dir(&t.path("/usr/local/bin"), 0o755, ROOT, false)?;
    steps.ensure_dir(&t.path("/etc/systemd/system"), 0o755, ROOT, false)?;
    steps.ensure_dir(&t.path(CONFIG_DIR), 0o700, service, true)?;
    steps.ensure_dir(&t.path(DEFAULT_STATE_DIR), 0o700, service, true)?;
    steps.ensure_file("binary", &t.path(BINARY_PATH), binary, 0o755, ROOT)?;
    install_profile(args, t, profile, service, steps)?;
    let stored = t.path(DEFAULT_STATE_DIR).join(CREDENTIALS_FILE);
    if stored.exists() {
        steps.ensure_mode(&stored, 0o600, service)?;
    }
    steps.ensure_file(
        "unit",
        &t.path(UNIT_PATH),
        UNIT_FILE.as_bytes(),
        0o644,
        ROOT,
    )
}

/// Reload systemd, enable the unit, and start (or restart) it.
fn start_service(args: &InstallArgs, t: &Target, steps: &mut Steps) -> anyhow::Result<()> {
    if let Some(why) = t.why_no_systemctl() {
        steps.say(format_args!(
            "skip systemctl: {why}; on the running system: systemctl daemon-reload && systemctl enable --now {UNIT_NAME}"
        ))?;
        return Ok(());
    }
    let changed = steps.changed;
    steps.act("systemctl daemon-reload", || systemctl(&["daemon-reload"]))?;
    steps.act(format!("systemctl enable {UNIT_NAME}"), || {
        systemctl(&["enable", UNIT_NAME])
    })?;
    if args.no_start {
        return steps.say(format_args!(
            "not starting it (--no-start): systemctl start {UNIT_NAME}"
        ));
    }
    // After a change, restart: on an upgrade the old binary is still running.
    // Without one, start: a no-op for a running agent, so a second install
    // does not interrupt it. Type=notify makes both wait until the agent
    // reports ready (it reached the control plane).
    let verb = if changed { "restart" } else { "start" };
    steps.act(format!("systemctl {verb} {UNIT_NAME} (waits until the agent reports ready)"), || {
        systemctl(&[verb, UNIT_NAME]).context(format!(
            "the service did not start; see: systemctl status {UNIT_NAME}; journalctl -u {UNIT_NAME} -n 50"
        ))
    })
}

/// [`uninstall`], printing to `out`.
pub fn uninstall_to(args: &UninstallArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let t = Target::new(&args.root)?;
    let mut steps = Steps {
        out,
        dry_run: args.dry_run,
        changed: false,
    };
    if !args.dry_run {
        require_root("uninstall")?;
    }
    let unit = t.path(UNIT_PATH);
    let use_systemctl = t.why_no_systemctl().is_none() && unit.exists();
    if use_systemctl {
        // --now stops it: SIGTERM, the agent drains within TimeoutStopSec.
        steps.act(format!("systemctl disable --now {UNIT_NAME}"), || {
            systemctl(&["disable", "--now", UNIT_NAME])
        })?;
    }
    steps.remove("unit", &unit)?;
    if use_systemctl {
        steps.act("systemctl daemon-reload", || systemctl(&["daemon-reload"]))?;
    }
    steps.remove("binary", &t.path(BINARY_PATH))?;

    let (config_dir, state_dir) = (t.path(CONFIG_DIR), t.path(DEFAULT_STATE_DIR));
    if !args.purge {
        steps.say(format_args!(
            "keep {} (profile) and {} (state, stored credentials) and user {SERVICE_USER}; uninstall --purge deletes them",
            config_dir.display(),
            state_dir.display()
        ))?;
        return Ok(());
    }
    steps.remove_dir("configuration directory", &config_dir)?;
    steps.remove_dir("state directory", &state_dir)?;
    match user::lookup(&t.root, t.on_host, SERVICE_USER)? {
        Some(_) => steps.act(
            format!(
                "delete system user {SERVICE_USER} and its group{}",
                t.where_()
            ),
            || user::delete(&t.root, t.on_host, SERVICE_USER),
        ),
        None => steps.say(format_args!(
            "ok: no system user {SERVICE_USER}{}",
            t.where_()
        )),
    }
}

/// Read and validate the profile to install, with the secrets the running
/// agent would see (profile, `$CREDENTIALS_DIRECTORY`, environment, and
/// the stored credentials file of an earlier install).
fn validate_profile(path: &Path, t: &Target, steps: &mut Steps) -> anyhow::Result<Profile> {
    let profile = Profile::read(path)?;
    let env = |k: &str| std::env::var(k).ok();
    let state_dir = t.path(profile.get("agent_STATE_DIR").unwrap_or(DEFAULT_STATE_DIR));
    let secrets = credentials::resolve(&profile, &state_dir, &env)?;
    let config = config::validate(&profile, &secrets, &env)?;
    steps.say(format_args!(
        "ok: profile {} is valid (control plane {}, agent group {})",
        path.display(),
        config.control_plane,
        config.group
    ))?;
    for w in &config.warnings {
        steps.say(format_args!("warning: {w}"))?;
    }
    if let Some(dir) = profile
        .get("agent_STATE_DIR")
        .filter(|d| Path::new(d) != Path::new(DEFAULT_STATE_DIR))
    {
        steps.say(format_args!(
            "warning: agent_STATE_DIR={dir}: the unit lets the agent write only {DEFAULT_STATE_DIR} and {CONFIG_DIR}; \
             create {dir} owned by {SERVICE_USER} and add ReadWritePaths={dir} with: systemctl edit {UNIT_NAME}"
        ))?;
    }
    let holds_secret = SECRET_KEYS.iter().any(|k| profile.get(k).is_some());
    if let (true, Err(e)) = (holds_secret, credentials::check_permissions(path)) {
        steps.say(format_args!(
            "warning: {} {}; delete it once installed, or {}",
            path.display(),
            e.problem,
            e.fix
        ))?;
    }
    Ok(profile)
}

/// Install the profile, or keep the installed one: after the first start
/// it holds blanked secrets, and copying the original over it again would
/// undo that (and could roll back a rotated secret).
fn install_profile(
    args: &InstallArgs,
    t: &Target,
    profile: &Profile,
    owner: Owner,
    steps: &mut Steps,
) -> anyhow::Result<()> {
    let dest = t.path(PROFILE_PATH);
    let installed = match fs::read(&dest) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dest.display())),
    };
    let same_file = fs::canonicalize(&args.config).ok() == fs::canonicalize(&dest).ok();
    match installed {
        Some(old) if !same_file && old != profile.text.as_bytes() && !args.replace_config => {
            steps.say(format_args!(
                "keep {}: it differs from {} (expected once the agent has blanked its secrets); \
                 to replace it, rerun with --replace-config or edit it in place",
                dest.display(),
                args.config.display()
            ))?;
            steps.ensure_mode(&dest, 0o600, owner)
        }
        _ if same_file => steps.ensure_mode(&dest, 0o600, owner),
        _ => steps.ensure_file("profile", &dest, profile.text.as_bytes(), 0o600, owner),
    }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "{what} must run as root: it manages a system user and writes under /etc, /usr/local/bin and /var/lib; \
             run it with sudo, or add --dry-run to see what it would do"
        );
    }
    Ok(())
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl")?;
    if !status.success() {
        bail!("systemctl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The tree being installed into.
struct Target {
    root: PathBuf,
    /// Whether `root` is the running system's `/`.
    on_host: bool,
}

impl Target {
    fn new(root: &Path) -> anyhow::Result<Target> {
        let root = fs::canonicalize(root)
            .with_context(|| format!("--root {}: no such directory", root.display()))?;
        if !root.is_dir() {
            bail!("--root {}: not a directory", root.display());
        }
        let on_host = root == Path::new("/");
        Ok(Target { root, on_host })
    }

    /// `abs` (an absolute path of the installed system) inside the tree.
    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// " in <root>" for messages about a tree that is not the host.
    fn where_(&self) -> String {
        if self.on_host {
            String::new()
        } else {
            format!(" in {}", self.root.display())
        }
    }

    fn why_no_systemctl(&self) -> Option<String> {
        if !self.on_host {
            return Some(format!(
                "installing into {}, not the running system",
                self.root.display()
            ));
        }
        if !sd_notify::booted().unwrap_or(false) {
            return Some("systemd is not running on this host".into());
        }
        None
    }
}

/// Who should own a file. `ids` is `None` only in a dry run, before the
/// service user exists.
#[derive(Debug, Clone, Copy)]
struct Owner {
    name: &'static str,
    ids: Option<Ids>,
}

const ROOT: Owner = Owner {
    name: "root",
    ids: Some(Ids { uid: 0, gid: 0 }),
};

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ids {
            Some(Ids { uid, gid }) if self.name != "root" => {
                write!(f, "{} ({uid}:{gid})", self.name)
            }
            _ => f.write_str(self.name),
        }
    }
}

/// Prints each step, and does it unless this is a dry run.
struct Steps<'a> {
    out: &'a mut dyn Write,
    dry_run: bool,
    /// Whether any action ran (an upgrade, a repair): the service restarts.
    changed: bool,
}

impl Steps<'_> {
    fn say(&mut self, line: impl fmt::Display) -> anyhow::Result<()> {
        writeln!(self.out, "{line}")?;
        Ok(())
    }

    /// Print `what` (an imperative: "create directory X") and do it.
    fn act(
        &mut self,
        what: impl Into<String>,
        action: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let what = what.into();
        if self.dry_run {
            return self.say(format_args!("would {what}"));
        }
        self.say(&what)?;
        self.changed = true;
        action().with_context(|| format!("cannot {what}"))
    }

    /// Create `path` as a directory, or (with `fix_existing`) correct the
    /// mode and owner of the one that is there. Shared directories such as
    /// /usr/local/bin are only created, never changed.
    fn ensure_dir(
        &mut self,
        path: &Path,
        mode: u32,
        owner: Owner,
        fix_existing: bool,
    ) -> anyhow::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() && !fix_existing => {
                self.say(format_args!("ok: {}", path.display()))
            }
            Ok(m) if m.is_dir() => self.ensure_mode(path, mode, owner),
            Ok(_) => bail!(
                "{} exists and is not a directory; move it away and rerun",
                path.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.act(
                format!(
                    "create directory {} ({mode:04o}, owner {owner})",
                    path.display()
                ),
                || {
                    fs::create_dir_all(path)?;
                    set_mode_and_owner(path, mode, owner)
                },
            ),
            Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        }
    }

    /// Write `content` to `path` unless it already holds exactly that.
    fn ensure_file(
        &mut self,
        label: &str,
        path: &Path,
        content: &[u8],
        mode: u32,
        owner: Owner,
    ) -> anyhow::Result<()> {
        let verb = match fs::read(path) {
            Ok(old) if old == content => return self.ensure_mode(path, mode, owner),
            Ok(_) => "replace",
            Err(e) if e.kind() == io::ErrorKind::NotFound => "install",
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        self.act(
            format!(
                "{verb} {label} {} ({mode:04o}, owner {owner})",
                path.display()
            ),
            || {
                let ids = owner.ids.map(|i| (i.uid, i.gid));
                Ok(write_file_atomically(path, content, mode, ids)?)
            },
        )
    }

    /// Correct the mode and owner of an existing `path`.
    fn ensure_mode(&mut self, path: &Path, mode: u32, owner: Owner) -> anyhow::Result<()> {
        let m = fs::symlink_metadata(path)
            .with_context(|| format!("cannot inspect {}", path.display()))?;
        let have = m.permissions().mode() & 0o7777;
        let owner_ok = owner
            .ids
            .is_none_or(|i| (m.uid(), m.gid()) == (i.uid, i.gid));
        if have == mode && owner_ok {
            return self.say(format_args!(
                "ok: {} ({mode:04o}, owner {owner})",
                path.display()
            ));
        }
        self.act(
            format!(
                "fix {}: mode {have:04o} owner {}:{} -> {mode:04o} owner {owner}",
                path.display(),
                m.uid(),
                m.gid()
            ),
            || set_mode_and_owner(path, mode, owner),
        )
    }

    fn remove(&mut self, label: &str, path: &Path) -> anyhow::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(_) => self.act(format!("remove {label} {}", path.display()), || {
                Ok(fs::remove_file(path)?)
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.say(format_args!("ok: {} is absent", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        }
    }

    fn remove_dir(&mut self, label: &str, path: &Path) -> anyhow::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(_) => self.act(
                format!("delete {label} {} and everything in it", path.display()),
                || Ok(fs::remove_dir_all(path)?),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.say(format_args!("ok: {} is absent", path.display()))
            }
            Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
        }
    }
}

fn set_mode_and_owner(path: &Path, mode: u32, owner: Owner) -> anyhow::Result<()> {
    if let Some(Ids { uid, gid }) = owner.ids {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    // After chown, which may clear mode bits.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The paths the installer writes are the ones the unit uses.
    #[test]
    fn unit_matches_installed_layout() {
        let lines: Vec<&str> = UNIT_FILE.lines().collect();
        let has = |l: &str| lines.contains(&l);
        assert!(has(&format!(
            "ExecStart={BINARY_PATH} run --config {PROFILE_PATH}"
        )));
        assert!(has(&format!("User={SERVICE_USER}")) && has(&format!("Group={SERVICE_USER}")));
        assert_eq!(format!("/var/lib/{SERVICE_USER}"), DEFAULT_STATE_DIR);
        assert!(has(&format!("StateDirectory={SERVICE_USER}")));
        assert!(has(&format!("ConfigurationDirectory={SERVICE_USER}")));
        assert!(has(&format!("ReadWritePaths={CONFIG_DIR}")));
        assert_eq!(
            Path::new(PROFILE_PATH).parent(),
            Some(Path::new(CONFIG_DIR))
        );
        assert!(has("RestartPreventExitStatus=64 78"));
        assert!(has("Type=notify"));
    }

    #[test]
    fn bad_profile_maps_to_exit_64() {
        let err: anyhow::Error = ConfigError::file(Path::new("p"), "bad", "fix").into();
        assert_eq!(exit_code(&err), 64);
        assert_eq!(exit_code(&err.context("while installing")), 64);
        assert_eq!(exit_code(&anyhow::anyhow!("io")), 1);
    }
}
