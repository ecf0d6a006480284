//! `profile.v1.Profile`: validate → store → convert.
use push_common::{Error, ids::UserId, validate::Violations};
use push_proto::profile::v1::{self as pb, profile_server::Profile};
use tonic::{Request, Response, Status};

use crate::{
    config::Config,
    store::{Field, Patch, Store},
};

const MAX_DISPLAY_NAME: usize = 256;
const MAX_AVATAR_URL: usize = 2048;
const MAX_ADDRESS: usize = 1024;
const MAX_ATTRIBUTE_KEY: usize = 64;

/// The Profile service.
#[derive(Clone)]
pub struct ProfileService {
    store: Store,
    config: Config,
}

impl ProfileService {
    pub fn new(store: Store, config: Config) -> Self {
        Self { store, config }
    }

    /// Checks every field of `p` (attributes only when `attributes` is set); its user.
    fn check_profile(&self, v: &mut Violations, p: &pb::UserProfile, attributes: bool) -> Option<UserId> {
        let user = v.parse::<UserId>("profile.user_id", &p.user_id);
        v.text("profile.display_name", &p.display_name, MAX_DISPLAY_NAME, false);
        v.text("profile.avatar_url", &p.avatar_url, MAX_AVATAR_URL, false);
        if !p.avatar_url.is_empty()
            && (!(p.avatar_url.starts_with("https://") || p.avatar_url.starts_with("http://"))
                || p.avatar_url.chars().any(char::is_whitespace))
        {
            v.add("profile.avatar_url", "must be an http:// or https:// URL without spaces");
        }
        v.text("profile.address", &p.address, MAX_ADDRESS, true);
        if p.version < 0 {
            v.add("profile.version", "must not be negative");
        }
        if attributes {
            if p.attributes.len() > self.config.max_attributes {
                let (n, max) = (p.attributes.len(), self.config.max_attributes);
                v.add("profile.attributes", format!("must have at most {max} entries, got {n}"));
            }
            for (k, val) in &p.attributes {
                self.check_attribute(v, k, Some(val));
            }
        }
        user
    }

    /// Most distinct paths an update mask may name: every path that is not an attribute
    /// key, plus one delete for each attribute a profile may hold and one set for each
    /// attribute it may end with. No useful mask names more.
    fn max_mask_paths(&self) -> usize {
        Field::WELL_KNOWN.len() + 2 + self.config.max_attributes.saturating_mul(2)
    }

    fn check_attribute(&self, v: &mut Violations, key: &str, value: Option<&String>) {
        if let Some(why) = attribute_key_problem(key) {
            v.add("profile.attributes", format!("key {key:?} {why}"));
            return;
        }
        let Some(value) = value else { return };
        let field = format!("profile.attributes[{key:?}]");
        if value.len() > self.config.max_attribute_bytes {
            let max = self.config.max_attribute_bytes;
            v.add(field, format!("must be at most {max} bytes, got {}", value.len()));
        } else {
            v.text(&field, value, usize::MAX, true);
        }
    }
}

/// Why `key` is not a valid attribute key, if it is not.
fn attribute_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() || key.len() > MAX_ATTRIBUTE_KEY {
        Some("must be 1 to 64 characters")
    } else if !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        Some("may only contain A-Z a-z 0-9 . _ -")
    } else {
        None
    }
}

/// The mask's paths, each once, in the order first named (a path named twice is the
/// same change); None when there are more than `max` distinct paths.
fn distinct(paths: Vec<String>, max: usize) -> Option<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for p in paths {
        if !seen.contains(&p) {
            if out.len() == max {
                return None;
            }
            seen.insert(p.clone());
            out.push(p);
        }
    }
    Some(out)
}

/// Translates an update mask into field changes, or violations.
fn patch(v: &mut Violations, p: &pb::UserProfile, paths: &[String]) -> Patch {
    let mut patch = Patch::default();
    if paths.is_empty() {
        v.add("update_mask", "must list at least one path (or \"*\")");
        return patch;
    }
    let all = paths.iter().any(|s| s == "*");
    let change = |patch: &mut Patch, field: Field| match field.value(p) {
        "" => patch.delete.push(field),
        value => {
            let value = value.to_owned();
            patch.set.push((field, value));
        }
    };
    for path in paths {
        match path.as_str() {
            "*" => {}
            "attributes" => patch.clear_attributes = true,
            other => {
                match (Field::WELL_KNOWN.into_iter().find(|f| f.path() == other), other.strip_prefix("attributes.")) {
                    (Some(field), _) if !all => change(&mut patch, field),
                    (Some(_), _) => {}
                    (None, Some(key)) if attribute_key_problem(key).is_none() => {
                        change(&mut patch, Field::Attribute(key.to_owned()))
                    }
                    _ => v.add(
                        "update_mask",
                        format!(
                            "unknown path {other:?}; expected display_name, avatar_url, address, \
                         attributes, attributes.KEY or *"
                        ),
                    ),
                }
            }
        }
    }
    if all {
        Field::WELL_KNOWN.into_iter().for_each(|f| change(&mut patch, f));
        patch.clear_attributes = true;
    }
    if patch.clear_attributes {
        // The whole map replaces the stored one.
        let is_attribute = |f: &Field| matches!(f, Field::Attribute(_));
        patch.set.retain(|(f, _)| !is_attribute(f));
        patch.delete.retain(|f| !is_attribute(f));
        patch.set.extend(p.attributes.iter().map(|(k, val)| (Field::Attribute(k.clone()), val.clone())));
    }
    patch
}

#[tonic::async_trait]
impl Profile for ProfileService {
    async fn put_profile(
        &self,
        req: Request<pb::PutProfileRequest>,
    ) -> Result<Response<pb::PutProfileResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let Some(p) = r.profile else {
            v.add("profile", "is required");
            return Err(v.check().unwrap_err().into());
        };
        let user = self.check_profile(&mut v, &p, true);
        let user = v.check_with(user)?;
        let profile = self.store.put(&user, &p).await?;
        Ok(Response::new(pb::PutProfileResponse { profile: Some(profile) }))
    }

    async fn update_profile(
        &self,
        req: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let Some(p) = r.profile else {
            v.add("profile", "is required");
            return Err(v.check().unwrap_err().into());
        };
        let max = self.max_mask_paths();
        let Some(paths) = distinct(r.update_mask.map(|m| m.paths).unwrap_or_default(), max) else {
            v.add("update_mask", format!("must name at most {max} distinct paths (5 + 2 × --max-attributes)"));
            let _ = self.check_profile(&mut v, &p, false);
            return Err(v.check().unwrap_err().into());
        };
        let replaces_map = paths.iter().any(|s| s == "attributes" || s == "*");
        let user = self.check_profile(&mut v, &p, replaces_map);
        if !replaces_map {
            for key in paths.iter().filter_map(|s| s.strip_prefix("attributes.")) {
                self.check_attribute(&mut v, key, p.attributes.get(key));
            }
        }
        let patch = patch(&mut v, &p, &paths);
        let user = v.check_with(user)?;
        let profile = self.store.update(&user, p.version, self.config.max_attributes, patch).await?;
        Ok(Response::new(pb::UpdateProfileResponse { profile: Some(profile) }))
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let user = v.parse::<UserId>("user_id", &r.user_id);
        let user = v.check_with(user)?;
        let Some(profile) = self.store.get(std::slice::from_ref(&user)).await?.pop().flatten() else {
            return Err(Error::NotFound(format!("user {:?} has no profile", r.user_id)).into());
        };
        Ok(Response::new(pb::GetProfileResponse { profile: Some(profile) }))
    }

    async fn batch_get_profiles(
        &self,
        req: Request<pb::BatchGetProfilesRequest>,
    ) -> Result<Response<pb::BatchGetProfilesResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let users = v.parse_all::<UserId>("user_ids", &r.user_ids, self.config.max_batch);
        v.check()?;
        let profiles = self.store.get(&users).await?;
        let mut out = pb::BatchGetProfilesResponse::default();
        for (user, profile) in r.user_ids.into_iter().zip(profiles) {
            match profile {
                Some(p) => out.profiles.push(p),
                None => out.missing_user_ids.push(user),
            }
        }
        Ok(Response::new(out))
    }

    async fn delete_profile(
        &self,
        req: Request<pb::DeleteProfileRequest>,
    ) -> Result<Response<pb::DeleteProfileResponse>, Status> {
        let r = req.into_inner();
        let mut v = Violations::new();
        let user = v.parse::<UserId>("user_id", &r.user_id);
        if r.version < 0 {
            v.add("version", "must not be negative");
        }
        let user = v.check_with(user)?;
        self.store.delete(&user, r.version).await?;
        Ok(Response::new(pb::DeleteProfileResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> pb::UserProfile {
        pb::UserProfile {
            user_id: "u".into(),
            display_name: "Ann".into(),
            attributes: [("lang".to_string(), "en".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn mask_paths_become_field_changes() {
        let mut v = Violations::new();
        let p = patch(
            &mut v,
            &profile(),
            &["display_name".into(), "address".into(), "attributes.lang".into(), "attributes.gone".into()],
        );
        assert!(v.is_empty());
        assert_eq!(patch_sets(&p), ["display_name=Ann", "lang=en"]);
        assert_eq!(p.delete, [Field::Address, Field::Attribute("gone".into())]);
        assert!(!p.clear_attributes);
    }

    #[test]
    fn whole_map_and_star_replace_attributes() {
        let mut v = Violations::new();
        let p = patch(&mut v, &profile(), &["*".into()]);
        assert!(v.is_empty());
        assert!(p.clear_attributes);
        assert_eq!(patch_sets(&p), ["display_name=Ann", "lang=en"]);
        assert_eq!(p.delete, [Field::AvatarUrl, Field::Address]);
    }

    #[test]
    fn unknown_and_empty_masks_are_violations() {
        for paths in [vec![], vec!["version".to_string()], vec!["attributes.a b".to_string()]] {
            let mut v = Violations::new();
            patch(&mut v, &profile(), &paths);
            assert!(!v.is_empty(), "{paths:?}");
        }
    }

    #[test]
    fn repeated_paths_count_once_and_too_many_are_refused() {
        let paths = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(distinct(paths(&["a", "b", "a", "a", "c", "b"]), 3), Some(paths(&["a", "b", "c"])));
        assert_eq!(distinct(std::iter::repeat_n("x".to_string(), 9000).collect(), 1), Some(paths(&["x"])));
        assert_eq!(distinct(paths(&["a", "b", "c", "d"]), 3), None);
    }

    fn patch_sets(p: &Patch) -> Vec<String> {
        p.set.iter().map(|(k, v)| format!("{}={v}", k.path())).collect()
    }
}
