//! `install` / `uninstall` into a temporary root tree, as root (CI runs as
//! root; install refuses to run otherwise). The service user is created in
//! the tree's own user database (`useradd --prefix`), never on the host, and
//! files are checked to be owned by the uid it got there.

use connectivity_agent::credentials::{self, CREDENTIALS_FILE};
use connectivity_agent::install::{self, InstallArgs, UninstallArgs};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const PROFILE: &str = "oic_URL=https://cp.example.com:7443\nagent_GROUP_IDENTIFIER=PRIVATE_GROUP\noic_USER=agent\noic_PASSWORD=s3cret\n";

struct Fixture {
    dir: tempfile::TempDir,
    /// The tree installed into (`--root`).
    root: PathBuf,
    /// The operator's profile and a build of the agent, outside the tree.
    profile: PathBuf,
    binary: PathBuf,
}

fn fixture() -> Fixture {
    assert!(
        rustix::process::geteuid().is_root(),
        "tests/install.rs creates users and chowns files: run it as root (CI does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let profile = dir.path().join("InstallerProfile.cfg");
    fs::write(&profile, PROFILE).unwrap();
    fs::set_permissions(&profile, fs::Permissions::from_mode(0o600)).unwrap();
    let binary = dir.path().join("connectivity-agent-v1");
    fs::write(&binary, "#!/bin/sh\necho v1\n").unwrap();
    Fixture {
        dir,
        root,
        profile,
        binary,
    }
}

impl Fixture {
    fn args(&self) -> InstallArgs {
        InstallArgs {
            config: self.profile.clone(),
            root: self.root.clone(),
            dry_run: false,
            binary: Some(self.binary.clone()),
            no_start: false,
            replace_config: false,
        }
    }

    fn uninstall_args(&self, purge: bool) -> UninstallArgs {
        UninstallArgs {
            root: self.root.clone(),
            dry_run: false,
            purge,
        }
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// uid and gid of the service user in the tree's /etc/passwd.
    fn service_ids(&self) -> Option<(u32, u32)> {
        let passwd = fs::read_to_string(self.path("/etc/passwd")).ok()?;
        let line = passwd
            .lines()
            .find(|l| l.starts_with("connectivity-agent:"))?;
        let f: Vec<&str> = line.split(':').collect();
        Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
    }
}

fn run_install(args: &InstallArgs) -> String {
    let mut out = Vec::new();
    let result = install::install_to(args, &mut out);
    let out = String::from_utf8(out).unwrap();
    result.unwrap_or_else(|e| panic!("install failed: {e:#}\noutput:\n{out}"));
    out
}

fn run_uninstall(args: &UninstallArgs) -> String {
    let mut out = Vec::new();
    let result = install::uninstall_to(args, &mut out);
    let out = String::from_utf8(out).unwrap();
    result.unwrap_or_else(|e| panic!("uninstall failed: {e:#}\noutput:\n{out}"));
    out
}

/// Every path under `root` with its mode, owner and (for files) content.
type Tree = BTreeMap<PathBuf, (u32, u32, u32, Option<Vec<u8>>)>;

fn snapshot(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, tree: &mut Tree) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let content = m.is_file().then(|| fs::read(&path).unwrap());
            tree.insert(
                path.strip_prefix(root).unwrap().to_owned(),
                (m.mode() & 0o7777, m.uid(), m.gid(), content),
            );
            if m.is_dir() {
                walk(root, &path, tree);
            }
        }
    }
    let mut tree = Tree::new();
    walk(root, root, &mut tree);
    tree
}

/// The tree without the user database that useradd keeps in `<root>/etc`.
fn installed_files(root: &Path) -> Tree {
    let user_db = [
        "passwd",
        "group",
        "shadow",
        "gshadow",
        "subuid",
        "subgid",
        ".pwd.lock",
    ];
    snapshot(root)
        .into_iter()
        .filter(|(p, _)| {
            let in_etc = p.parent() == Some(Path::new("etc"));
            let name = p.file_name().unwrap().to_string_lossy();
            !(in_etc && user_db.iter().any(|db| name.trim_end_matches('-') == *db))
        })
        .collect()
}

fn meta(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn install_lays_out_every_file_with_its_mode_and_owner() {
    let f = fixture();
    let out = run_install(&f.args());
    let (uid, gid) = f.service_ids().expect("service user created in the tree");
    assert!(uid != 0 && gid != 0);
    // Without <root>/etc/shadow useradd writes the locked password "!" into
    // passwd itself; with one it writes "x". Either way nobody can log in.
    let passwd = fs::read_to_string(f.path("/etc/passwd")).unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("connectivity-agent:"))
        .unwrap();
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(
        fields,
        [
            "connectivity-agent",
            fields[1],
            &uid.to_string(),
            &gid.to_string(),
            "connectivity-agent service",
            "/var/lib/connectivity-agent",
            "/usr/sbin/nologin"
        ]
    );
    assert!(["x", "!"].contains(&fields[1]), "{line}");
    let group = fs::read_to_string(f.path("/etc/group")).unwrap();
    let line = group
        .lines()
        .find(|l| l.starts_with("connectivity-agent:"))
        .unwrap();
    assert_eq!(
        line.split(':').nth(2),
        Some(gid.to_string().as_str()),
        "{line}"
    );

    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/connectivity-agent.service"),
    )
    .unwrap();
    let expected: Tree = [
        ("etc", (0o755, 0, 0, None)),
        ("etc/connectivity-agent", (0o700, uid, gid, None)),
        (
            "etc/connectivity-agent/InstallerProfile.cfg",
            (0o600, uid, gid, Some(PROFILE.as_bytes().to_vec())),
        ),
        ("etc/systemd", (0o755, 0, 0, None)),
        ("etc/systemd/system", (0o755, 0, 0, None)),
        (
            "etc/systemd/system/connectivity-agent.service",
            (0o644, 0, 0, Some(unit.into_bytes())),
        ),
        ("usr", (0o755, 0, 0, None)),
        ("usr/local", (0o755, 0, 0, None)),
        ("usr/local/bin", (0o755, 0, 0, None)),
        (
            "usr/local/bin/connectivity-agent",
            (0o755, 0, 0, Some(fs::read(&f.binary).unwrap())),
        ),
        ("var", (0o755, 0, 0, None)),
        ("var/lib", (0o755, 0, 0, None)),
        ("var/lib/connectivity-agent", (0o700, uid, gid, None)),
    ]
    .into_iter()
    .map(|(p, v)| (PathBuf::from(p), v))
    .collect();
    assert_eq!(installed_files(&f.root), expected, "output:\n{out}");

    for line in [
        format!(
            "create system user connectivity-agent (own group, no login shell, home /var/lib/connectivity-agent) in {}",
            f.root.display()
        ),
        format!(
            "install binary {} (0755, owner root)",
            f.path("/usr/local/bin/connectivity-agent").display()
        ),
        format!(
            "install profile {} (0600, owner connectivity-agent ({uid}:{gid}))",
            f.path("/etc/connectivity-agent/InstallerProfile.cfg")
                .display()
        ),
        format!(
            "install unit {} (0644, owner root)",
            f.path("/etc/systemd/system/connectivity-agent.service")
                .display()
        ),
        format!(
            "skip systemctl: installing into {}, not the running system; on the running system: systemctl daemon-reload && systemctl enable --now connectivity-agent.service",
            f.root.display()
        ),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing line {line:?} in:\n{out}"
        );
    }
}

#[test]
fn installing_twice_changes_nothing() {
    let f = fixture();
    run_install(&f.args());
    let before = snapshot(&f.root);
    let out = run_install(&f.args());
    assert_eq!(snapshot(&f.root), before);
    let acted: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("ok: ") && !l.starts_with("skip systemctl: "))
        .collect();
    assert!(acted.is_empty(), "second install acted:\n{out}");
    let passwd = fs::read_to_string(f.path("/etc/passwd")).unwrap();
    assert_eq!(
        passwd
            .lines()
            .filter(|l| l.starts_with("connectivity-agent:"))
            .count(),
        1
    );
}

#[test]
fn upgrade_replaces_the_binary_and_keeps_config_and_state() {
    let f = fixture();
    run_install(&f.args());
    let (uid, gid) = f.service_ids().unwrap();
    let installed_profile = f.path("/etc/connectivity-agent/InstallerProfile.cfg");
    let state = f.path("/var/lib/connectivity-agent");
    // First start of the agent: secrets move to the state directory.
    let report = credentials::migrate(&installed_profile, &state).unwrap();
    assert_eq!(report.moved, ["oic_PASSWORD"]);
    fs::write(state.join("offsets.db"), "offsets").unwrap();
    let blanked = fs::read(&installed_profile).unwrap();
    assert!(!String::from_utf8_lossy(&blanked).contains("s3cret"));
    let stored = fs::read(state.join(CREDENTIALS_FILE)).unwrap();

    // The operator reruns the same command with a new build.
    let v2 = f.dir.path().join("connectivity-agent-v2");
    fs::write(&v2, "#!/bin/sh\necho v2\n").unwrap();
    let out = run_install(&InstallArgs {
        binary: Some(v2.clone()),
        ..f.args()
    });

    let bin = f.path("/usr/local/bin/connectivity-agent");
    assert_eq!(fs::read(&bin).unwrap(), fs::read(&v2).unwrap());
    assert_eq!(meta(&bin), (0o755, 0, 0));
    assert!(
        out.contains(&format!(
            "replace binary {} (0755, owner root)",
            bin.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "keep {}: it differs from {}",
            installed_profile.display(),
            f.profile.display()
        )),
        "{out}"
    );
    assert_eq!(
        fs::read(&installed_profile).unwrap(),
        blanked,
        "the secret must not come back"
    );
    assert_eq!(meta(&installed_profile), (0o600, uid, gid));
    assert_eq!(fs::read(state.join(CREDENTIALS_FILE)).unwrap(), stored);
    assert_eq!(meta(&state.join(CREDENTIALS_FILE)), (0o600, uid, gid));
    assert_eq!(
        fs::read_to_string(state.join("offsets.db")).unwrap(),
        "offsets"
    );

    // Upgrading with the installed (blanked) profile validates against the
    // stored credentials and leaves the profile alone.
    let out = run_install(&InstallArgs {
        config: installed_profile.clone(),
        ..f.args()
    });
    assert!(
        out.contains(&format!(
            "ok: profile {} is valid",
            installed_profile.display()
        )),
        "{out}"
    );
    assert_eq!(fs::read(&installed_profile).unwrap(), blanked);
}

#[test]
fn replace_config_installs_the_new_profile() {
    let f = fixture();
    run_install(&f.args());
    let new_profile = PROFILE.replace("s3cret", "n3w-secret");
    fs::write(&f.profile, &new_profile).unwrap();
    let out = run_install(&InstallArgs {
        replace_config: true,
        ..f.args()
    });
    let installed = f.path("/etc/connectivity-agent/InstallerProfile.cfg");
    assert!(
        out.contains(&format!("replace profile {}", installed.display())),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&installed).unwrap(), new_profile);
    let (uid, gid) = f.service_ids().unwrap();
    assert_eq!(meta(&installed), (0o600, uid, gid));
}

#[test]
fn loose_modes_are_fixed_on_reinstall() {
    let f = fixture();
    run_install(&f.args());
    let installed = f.path("/etc/connectivity-agent/InstallerProfile.cfg");
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(
        f.path("/var/lib/connectivity-agent"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = run_install(&f.args());
    let (uid, gid) = f.service_ids().unwrap();
    assert!(
        out.contains(&format!(
            "fix {}: mode 0644 owner {uid}:{gid} -> 0600",
            installed.display()
        )),
        "{out}"
    );
    assert_eq!(meta(&installed), (0o600, uid, gid));
    assert_eq!(
        meta(&f.path("/var/lib/connectivity-agent")),
        (0o700, uid, gid)
    );
}

#[test]
fn invalid_profile_is_refused_before_anything_is_written() {
    let f = fixture();
    fs::write(
        &f.profile,
        "oic_URL=http://cp.example.com:80\nagent_GROUP_IDENTIFIER=G\noic_USER=u\noic_PASSWORD=p\n",
    )
    .unwrap();
    let mut out = Vec::new();
    let err = install::install_to(&f.args(), &mut out).unwrap_err();
    assert_eq!(install::exit_code(&err), 64);
    assert_eq!(
        err.to_string(),
        format!(
            "{}:1: oic_URL = \"http://cp.example.com:80\": uses http://, but only https is allowed (credentials must not cross the network in clear text)\n  fix: write it as https://<host>:<port>",
            f.profile.display()
        )
    );
    assert!(snapshot(&f.root).is_empty());
}

#[test]
fn dry_run_prints_every_action_and_changes_nothing() {
    let f = fixture();
    let out = run_install(&InstallArgs {
        dry_run: true,
        ..f.args()
    });
    assert!(snapshot(&f.root).is_empty(), "dry run wrote into the tree");
    for what in [
        "would create system user connectivity-agent",
        &format!(
            "would create directory {} (0700, owner connectivity-agent)",
            f.path("/etc/connectivity-agent").display()
        ),
        &format!(
            "would create directory {} (0700, owner connectivity-agent)",
            f.path("/var/lib/connectivity-agent").display()
        ),
        &format!(
            "would install binary {}",
            f.path("/usr/local/bin/connectivity-agent").display()
        ),
        &format!(
            "would install profile {}",
            f.path("/etc/connectivity-agent/InstallerProfile.cfg")
                .display()
        ),
        &format!(
            "would install unit {}",
            f.path("/etc/systemd/system/connectivity-agent.service")
                .display()
        ),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(what)),
            "missing {what:?} in:\n{out}"
        );
    }

    // A dry run of an upgrade leaves the installed tree as it was.
    run_install(&f.args());
    let before = snapshot(&f.root);
    let v2 = f.dir.path().join("v2");
    fs::write(&v2, "v2").unwrap();
    let out = run_install(&InstallArgs {
        dry_run: true,
        binary: Some(v2),
        ..f.args()
    });
    assert!(out.contains("would replace binary"), "{out}");
    assert_eq!(snapshot(&f.root), before);
    let out = run_uninstall(&UninstallArgs {
        dry_run: true,
        ..f.uninstall_args(true)
    });
    assert!(
        out.contains("would delete system user connectivity-agent"),
        "{out}"
    );
    assert_eq!(snapshot(&f.root), before);
}

#[test]
fn uninstall_keeps_config_and_state_unless_purged() {
    let f = fixture();
    run_install(&f.args());
    let state = f.path("/var/lib/connectivity-agent");
    fs::write(state.join("offsets.db"), "offsets").unwrap();

    let out = run_uninstall(&f.uninstall_args(false));
    assert!(!f.path("/usr/local/bin/connectivity-agent").exists());
    assert!(
        !f.path("/etc/systemd/system/connectivity-agent.service")
            .exists()
    );
    assert_eq!(
        fs::read_to_string(f.path("/etc/connectivity-agent/InstallerProfile.cfg")).unwrap(),
        PROFILE
    );
    assert_eq!(
        fs::read_to_string(state.join("offsets.db")).unwrap(),
        "offsets"
    );
    assert!(f.service_ids().is_some());
    assert!(out.contains("uninstall --purge deletes them"), "{out}");

    // Again: nothing left to do.
    let out = run_uninstall(&f.uninstall_args(false));
    assert!(
        out.lines()
            .all(|l| l.starts_with("ok: ") || l.starts_with("keep ")),
        "{out}"
    );

    // Reinstalling finds the kept profile and user.
    run_install(&f.args());
    let out = run_uninstall(&f.uninstall_args(true));
    assert!(!f.path("/etc/connectivity-agent").exists());
    assert!(!state.exists());
    assert!(f.service_ids().is_none(), "{out}");
    let group = fs::read_to_string(f.path("/etc/group")).unwrap();
    assert!(!group.contains("connectivity-agent:"), "{group}");
    assert!(f.path("/usr/local/bin").is_dir(), "shared directories stay");
}
