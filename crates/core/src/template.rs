//! `{{.Field}}` templates, as written in the Go service's configuration.
//!
//! The Go service rendered these with `text/template` over its whole worker struct. Only
//! plain field substitution is ever used in practice, so this is a small substitution
//! over a fixed list of fields: existing templates keep working byte for byte, and a
//! misspelt field is a configuration error instead of an empty string at run time.

use std::fmt;

/// A parsed template: literal text and field references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// The fields a template may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `{{.Account}}`: the role's UNIX account.
    Account,
    /// `{{.DesiredUID}}`: the UID the files are named after on the nodes.
    DesiredUid,
    /// `{{.Experiment}}`: the experiment's configuration key.
    Experiment,
    /// `{{.Role}}`: the role.
    Role,
    /// `{{.Service}}`: the service's configuration name, `<experiment>_<role>`.
    Service,
}

impl Field {
    const ALL: [(&'static str, Self); 5] = [
        ("Account", Self::Account),
        ("DesiredUID", Self::DesiredUid),
        ("Experiment", Self::Experiment),
        ("Role", Self::Role),
        ("Service", Self::Service),
    ];
}

/// Values for rendering a template.
pub trait Fields {
    /// The value of `field`.
    fn field(&self, field: Field) -> String;
}

/// A template that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// Parses `source`, accepting only the fields in `allowed`.
    pub fn parse(source: &str, allowed: &[Field]) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| TemplateError(format!("unclosed `{{{{` in `{source}`")))?;
            let inner = after[..end].trim();
            let name = inner.strip_prefix('.').ok_or_else(|| {
                TemplateError(format!(
                    "`{{{{{inner}}}}}` is not a field reference like `{{{{.Account}}}}`"
                ))
            })?;
            let field = Field::ALL
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, f)| *f)
                .filter(|f| allowed.contains(f))
                .ok_or_else(|| {
                    let names: Vec<_> = Field::ALL
                        .iter()
                        .filter(|(_, f)| allowed.contains(f))
                        .map(|(n, _)| format!("{{{{.{n}}}}}"))
                        .collect();
                    TemplateError(format!(
                        "unknown placeholder `{{{{.{name}}}}}`; available: {}",
                        names.join(", ")
                    ))
                })?;
            parts.push(Part::Field(field));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err(TemplateError(format!("stray `}}}}` in `{source}`")));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Self {
            source: source.to_string(),
            parts,
        })
    }

    /// The text as written in the configuration.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Substitutes every field.
    pub fn render(&self, values: &dyn Fields) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(t) => t.clone(),
                Part::Field(f) => values.field(*f),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Values;
    impl Fields for Values {
        fn field(&self, field: Field) -> String {
            match field {
                Field::Account => "dunepro".into(),
                Field::DesiredUid => "5000".into(),
                Field::Experiment => "dune".into(),
                Field::Role => "production".into(),
                Field::Service => "dune_production".into(),
            }
        }
    }

    #[test]
    fn renders_go_templates() {
        let all = [
            Field::Account,
            Field::DesiredUid,
            Field::Experiment,
            Field::Role,
        ];
        let t = Template::parse("/tmp/{{.DesiredUID}}_{{ .Account }}", &all).unwrap();
        assert_eq!(t.render(&Values), "/tmp/5000_dunepro");
        let t = Template::parse("/tmp/default_role_{{.Experiment}}_{{.DesiredUID}}", &all).unwrap();
        assert_eq!(t.render(&Values), "/tmp/default_role_dune_5000");
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = Template::parse("{{.Acount}}@X", &[Field::Account]).unwrap_err();
        assert!(err.0.contains("unknown placeholder `{{.Acount}}`"), "{err}");
        assert!(err.0.contains("{{.Account}}"));
        assert!(Template::parse("{{.Role}}", &[Field::Account]).is_err());
        assert!(Template::parse("{{.Account", &[Field::Account]).is_err());
        assert!(Template::parse("{{Account}}", &[Field::Account]).is_err());
    }
}
