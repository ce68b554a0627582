//! The service's system user: look it up, create it, delete it.
//!
//! On the host (`--root /`) this is `useradd`/`userdel` and an NSS lookup
//! (`getent`), so users from LDAP or sssd count. In another tree (an image
//! being built, a test) it is `useradd --prefix <root>` and a read of
//! `<root>/etc/passwd`: the user gets a uid in *that* tree's database, and
//! the installer chowns files to that uid, which is what the tree's system
//! will see when it boots.

use anyhow::{Context, bail};
use std::path::Path;
use std::process::Command;

/// A user's numeric identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// `name`'s uid and primary gid in the user database of `root`.
pub fn lookup(root: &Path, on_host: bool, name: &str) -> anyhow::Result<Option<Ids>> {
    let passwd = if on_host {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .context("cannot run getent")?;
        // getent exits 2 for "no such key".
        if !out.status.success() {
            return Ok(None);
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        let path = root.join("etc/passwd");
        match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == name {
            let parse = |s: &str| {
                s.parse::<u32>()
                    .with_context(|| format!("bad passwd line for {name}: {line:?}"))
            };
            return Ok(Some(Ids {
                uid: parse(fields[2])?,
                gid: parse(fields[3])?,
            }));
        }
    }
    Ok(None)
}

/// Create `name` as a system user with a group of the same name, no login
/// shell and no home directory of its own (`home` is the state directory).
pub fn create(root: &Path, on_host: bool, name: &str, home: &str) -> anyhow::Result<()> {
    let mut cmd = Command::new("useradd");
    cmd.args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        home,
        "--shell",
        "/usr/sbin/nologin",
    ])
    .args(["--comment", "connectivity-agent service"]);
    if !on_host {
        cmd.arg("--prefix").arg(root);
    }
    cmd.arg(name);
    run(cmd)
}

/// Delete `name` and its group.
pub fn delete(root: &Path, on_host: bool, name: &str) -> anyhow::Result<()> {
    let prefixed = |program: &str| {
        let mut cmd = Command::new(program);
        if !on_host {
            cmd.arg("--prefix").arg(root);
        }
        cmd.arg(name);
        cmd
    };
    run(prefixed("userdel"))?;
    // userdel removes the user's group only when login.defs says
    // USERGROUPS_ENAB yes; a tree without login.defs keeps it.
    if group_exists(root, on_host, name)? {
        run(prefixed("groupdel"))?;
    }
    Ok(())
}

fn group_exists(root: &Path, on_host: bool, name: &str) -> anyhow::Result<bool> {
    if on_host {
        return Ok(Command::new("getent")
            .args(["group", name])
            .output()
            .context("cannot run getent")?
            .status
            .success());
    }
    let text = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    Ok(text.lines().any(|l| l.split(':').next() == Some(name)))
}

fn run(mut cmd: Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
