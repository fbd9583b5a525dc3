//! Who a container's process runs as: the image's `User`, overridden by the
//! CRI security context, resolved against the image's `/etc/passwd` and
//! `/etc/group` as containerd and CRI-O do.

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, without the primary one, sorted and unique.
    pub additional_gids: Vec<u32>,
}

/// What the image and the request say.
#[derive(Debug, Clone, Default)]
pub struct UserRequest<'a> {
    /// The image config's `User`: "", "name", "uid", "name:group", "uid:gid".
    pub image_user: &'a str,
    pub run_as_user: Option<i64>,
    pub run_as_username: &'a str,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: &'a [i64],
    /// SupplementalGroupsPolicy Strict: only the groups asked for, none from
    /// the image's /etc/group.
    pub strict: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("{what} {value} is out of range (0 to 4294967294)")]
    OutOfRange { what: &'static str, value: i64 },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(PasswdEntry { name, uid, gid })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let _password = f.next()?;
            let gid = f.next()?.parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect();
            Some(GroupEntry { name, gid, members })
        })
        .collect()
}

fn id(what: &'static str, value: i64) -> Result<u32, UserError> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or(UserError::OutOfRange { what, value })
}

/// Resolves `req` against the image's passwd and group files (empty text
/// when the image has none).
pub fn resolve(req: &UserRequest, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let (image_user, image_group) = match req.image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (req.image_user, None),
    };

    // The user: the request's uid, else its name, else the image's.
    let (uid, mut gid, name): (u32, u32, Option<&str>) = if let Some(u) = req.run_as_user {
        let uid = id("runAsUser", u)?;
        match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name)),
            None => (uid, 0, None),
        }
    } else if !req.run_as_username.is_empty() {
        let e = users
            .iter()
            .find(|e| e.name == req.run_as_username)
            .ok_or_else(|| UserError::UnknownUser(req.run_as_username.to_string()))?;
        (e.uid, e.gid, Some(e.name))
    } else if image_user.is_empty() {
        (0, 0, users.iter().find(|e| e.uid == 0).map(|e| e.name))
    } else if let Ok(uid) = image_user.parse::<u32>() {
        match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name)),
            None => (uid, 0, None),
        }
    } else {
        let e = users
            .iter()
            .find(|e| e.name == image_user)
            .ok_or_else(|| UserError::UnknownUser(image_user.to_string()))?;
        (e.uid, e.gid, Some(e.name))
    };

    // The group: the request's, else the image's `user:group`, else the
    // user's primary group.
    if let Some(g) = req.run_as_group {
        gid = id("runAsGroup", g)?;
    } else if let Some(g) = image_group.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                groups
                    .iter()
                    .find(|e| e.name == g)
                    .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?
                    .gid
            }
        };
    }

    let mut additional = Vec::new();
    if !req.strict
        && let Some(name) = name
    {
        additional.extend(
            groups
                .iter()
                .filter(|g| g.members.contains(&name))
                .map(|g| g.gid),
        );
    }
    for g in req.supplemental_groups {
        additional.push(id("supplementalGroups", *g)?);
    }
    additional.retain(|g| *g != gid);
    additional.sort_unstable();
    additional.dedup();
    Ok(Identity {
        uid,
        gid,
        additional_gids: additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n# comment\nnobody:x:65534:65534::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\naudio:x:29:www\n";

    fn req(image_user: &str) -> UserRequest<'_> {
        UserRequest {
            image_user,
            ..Default::default()
        }
    }

    #[test]
    fn the_image_user_by_name_gets_its_groups() {
        let id = resolve(&req("www"), PASSWD, GROUP).unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 33,
                gid: 33,
                additional_gids: vec![29, 50]
            }
        );
    }

    #[test]
    fn an_unknown_numeric_user_is_fine_an_unknown_name_is_not() {
        assert_eq!(resolve(&req("1234"), PASSWD, GROUP).unwrap().gid, 0);
        assert_eq!(
            resolve(&req("ghost"), PASSWD, GROUP),
            Err(UserError::UnknownUser("ghost".into()))
        );
        assert_eq!(resolve(&req("1234:77"), "", "").unwrap().gid, 77);
        assert_eq!(
            resolve(&req("www:nogroup"), PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }

    #[test]
    fn the_request_overrides_the_image() {
        let r = UserRequest {
            image_user: "www",
            run_as_user: Some(65534),
            run_as_group: Some(7),
            supplemental_groups: &[1000, 7],
            ..Default::default()
        };
        let id = resolve(&r, PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (65534, 7));
        assert_eq!(id.additional_gids, vec![1000]);

        let r = UserRequest {
            run_as_username: "www",
            strict: true,
            ..Default::default()
        };
        let id = resolve(&r, PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid, id.additional_gids), (33, 33, vec![]));
    }

    #[test]
    fn ids_out_of_range_are_refused() {
        let r = UserRequest {
            run_as_user: Some(-1),
            ..Default::default()
        };
        assert!(matches!(
            resolve(&r, PASSWD, GROUP),
            Err(UserError::OutOfRange { .. })
        ));
    }

    #[test]
    fn no_user_is_root() {
        let id = resolve(&req(""), PASSWD, GROUP).unwrap();
        assert_eq!((id.uid, id.gid), (0, 0));
    }
}
