//! `${vars.X}`, `${stages.X}`, `${params.X}` and `${out}` in forge.yaml strings.
//!
//! A string is parsed once into pieces; validation checks each reference against what the
//! surrounding field allows, and the executor renders the pieces with real paths. `$${` is a
//! literal `${`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Var(String),
    Stage(String),
    Param(String),
    Out,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i..];
            if let Some(r) = after.strip_prefix("$${") {
                lit.push_str("${");
                rest = r;
            } else if let Some(body) = after.strip_prefix("${") {
                let end = body
                    .find('}')
                    .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?;
                if !lit.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                pieces.push(parse_ref(&body[..end])?);
                rest = &body[end + 1..];
            } else {
                lit.push('$');
                rest = &after[1..];
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    /// The template is exactly one reference (its value keeps its type when substituted).
    pub fn single(&self) -> Option<&Piece> {
        match self.pieces.as_slice() {
            [p] if !matches!(p, Piece::Lit(_)) => Some(p),
            _ => None,
        }
    }

    /// Renders every piece through `f` (literal pieces as they are).
    pub fn render<E>(&self, mut f: impl FnMut(&Piece) -> Result<String, E>) -> Result<String, E> {
        let mut s = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(l) => s.push_str(l),
                other => s.push_str(&f(other)?),
            }
        }
        Ok(s)
    }
}

fn parse_ref(body: &str) -> Result<Piece, String> {
    let body = body.trim();
    if body == "out" {
        return Ok(Piece::Out);
    }
    let (ns, name) = body.split_once('.').unwrap_or((body, ""));
    if name.is_empty() || !name.chars().all(is_name_char) {
        return Err(bad_ref(body));
    }
    let name = name.to_string();
    match ns {
        "vars" => Ok(Piece::Var(name)),
        "stages" => Ok(Piece::Stage(name)),
        "params" => Ok(Piece::Param(name)),
        _ => Err(bad_ref(body)),
    }
}

fn bad_ref(body: &str) -> String {
    format!(
        "unknown reference `${{{body}}}`: expected ${{vars.NAME}}, ${{stages.NAME}}, ${{params.NAME}} or ${{out}}"
    )
}

/// Characters allowed in stage, var and param names.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl fmt::Display for Piece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Piece::Lit(l) => f.write_str(&l.replace("${", "$${")),
            Piece::Var(n) => write!(f, "${{vars.{n}}}"),
            Piece::Stage(n) => write!(f, "${{stages.{n}}}"),
            Piece::Param(n) => write!(f, "${{params.{n}}}"),
            Piece::Out => f.write_str("${out}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_reference_kind() {
        let t = Template::parse(
            "python x.py ${stages.sft}/m.jsonl ${out}/a ${params.dpi} ${vars.model}",
        )
        .unwrap();
        assert_eq!(
            t.pieces,
            vec![
                Piece::Lit("python x.py ".into()),
                Piece::Stage("sft".into()),
                Piece::Lit("/m.jsonl ".into()),
                Piece::Out,
                Piece::Lit("/a ".into()),
                Piece::Param("dpi".into()),
                Piece::Lit(" ".into()),
                Piece::Var("model".into()),
            ]
        );
    }

    #[test]
    fn escapes_and_plain_dollars_stay_literal() {
        let t = Template::parse("echo $$${HOME} $HOME $${out}").unwrap();
        assert_eq!(
            t.pieces,
            vec![Piece::Lit("echo $${HOME} $HOME ${out}".into())]
        );
        let round: String = t.pieces.iter().map(|p| p.to_string()).collect();
        assert_eq!(Template::parse(&round).unwrap(), t);
    }

    #[test]
    fn rejects_unknown_and_unterminated_references() {
        assert!(
            Template::parse("${foo.bar}")
                .unwrap_err()
                .contains("unknown reference `${foo.bar}`")
        );
        assert!(Template::parse("${vars.}").is_err());
        assert!(Template::parse("${vars.a b}").is_err());
        assert!(
            Template::parse("a ${vars.x")
                .unwrap_err()
                .contains("unterminated")
        );
    }

    #[test]
    fn single_reference_is_detected() {
        assert_eq!(
            Template::parse("${vars.lr}").unwrap().single(),
            Some(&Piece::Var("lr".into()))
        );
        assert_eq!(Template::parse("x${vars.lr}").unwrap().single(), None);
    }
}
