//! Unknown-key detection with "did you mean" suggestions.
//!
//! serde's `deny_unknown_fields` stops at the first unknown key and cannot say which valid
//! key was meant. Before the typed parse, this module walks the document against the field
//! lists of the raw structs (read from serde itself, so they cannot drift) and reports every
//! unknown key with its full path and the closest valid key.

use serde::Deserialize;
use serde::de::{self, Visitor};
use serde_yaml::Value;

use super::Problem;
use super::raw::{
    RawConfig, RawEmail, RawExperiment, RawFerry, RawMetrics, RawNotifications, RawPrometheus,
    RawRetry, RawRole, RawTimeouts, RawWorkerTypes,
};

/// Reports every key of `doc` that no raw struct declares.
pub(super) fn unknown_keys(doc: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_map(doc, "", fields::<RawConfig>(), &mut problems);
    let Value::Mapping(top) = doc else {
        return problems;
    };
    for (key, value) in top {
        let Some(key) = key.as_str() else { continue };
        match key {
            "timeouts" => check_map(value, key, fields::<RawTimeouts>(), &mut problems),
            "email" => check_map(value, key, fields::<RawEmail>(), &mut problems),
            "prometheus" => check_map(value, key, fields::<RawPrometheus>(), &mut problems),
            "metrics" => check_map(value, key, fields::<RawMetrics>(), &mut problems),
            "ferry" => check_map(value, key, fields::<RawFerry>(), &mut problems),
            "notifications" | "notifications_test" => {
                check_map(value, key, fields::<RawNotifications>(), &mut problems);
            }
            "workerType" => {
                check_map(value, key, fields::<RawWorkerTypes>(), &mut problems);
                for_each_entry(value, key, |path, v| {
                    check_map(v, path, fields::<RawRetry>(), &mut problems);
                });
            }
            "experiments" => for_each_entry(value, key, |path, experiment| {
                check_map(experiment, path, fields::<RawExperiment>(), &mut problems);
                if let Some(roles) = experiment.get("roles") {
                    for_each_entry(roles, &format!("{path}.roles"), |path, role| {
                        check_map(role, path, fields::<RawRole>(), &mut problems);
                    });
                }
            }),
            _ => {}
        }
    }
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    problems
}

/// The closest of `candidates` to `word`, if it is close enough to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn check_map(value: &Value, path: &str, known: &[&str], problems: &mut Vec<Problem>) {
    let Value::Mapping(map) = value else { return };
    for key in map.keys() {
        let Some(key) = key.as_str() else {
            problems.push(Problem::new(path, "keys must be strings"));
            continue;
        };
        if known.contains(&key) {
            continue;
        }
        let full = join(path, key);
        let message = match suggest(key, known.iter().copied()) {
            Some(near) => format!("unknown key; did you mean `{}`?", join(path, near)),
            None => "unknown key".to_string(),
        };
        problems.push(Problem::new(&full, message));
    }
}

fn for_each_entry(value: &Value, path: &str, mut f: impl FnMut(&str, &Value)) {
    let Value::Mapping(map) = value else { return };
    for (key, v) in map {
        if let Some(key) = key.as_str() {
            f(&join(path, key), v);
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The serialized field names of a struct deriving `Deserialize`.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut found = None;
    // The probe always fails on purpose once it has recorded the field list.
    let _ = T::deserialize(FieldProbe(&mut found));
    found.unwrap_or(&[])
}

struct FieldProbe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("field probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_field_names_from_serde() {
        assert!(fields::<RawRole>().contains(&"desiredUIDOverride"));
        assert!(fields::<RawNotifications>().contains(&"SLACK_ALERTS_URL"));
        assert!(fields::<RawConfig>().contains(&"serviceCreddVaultTokenPathRoot"));
    }

    #[test]
    fn reports_nested_typos_with_suggestion() {
        let doc: Value = serde_yaml::from_str(
            "experiments:\n  dune:\n    roles:\n      production:\n        acount: x\n\
             timeouts:\n  pushTimout: 3s\n",
        )
        .unwrap();
        let problems = unknown_keys(&doc);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].key, "experiments.dune.roles.production.acount");
        assert!(problems[0].message.contains("roles.production.account"));
        assert_eq!(problems[1].key, "timeouts.pushTimout");
        assert!(problems[1].message.contains("`timeouts.pushTimeout`"));
    }

    #[test]
    fn case_differences_are_suggested() {
        let doc: Value = serde_yaml::from_str("keytabpath: /x\n").unwrap();
        let problems = unknown_keys(&doc);
        assert!(problems[0].message.contains("`keytabPath`"), "{problems:?}");
    }
}
