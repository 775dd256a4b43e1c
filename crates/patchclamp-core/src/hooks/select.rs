//! Selectors: which hook points a capture asks for (a name, a glob, a layer, all).

use std::sync::Arc;

use crate::error::{nearest_hint, Error, Result};
use crate::hooks::HookPoint;
use crate::model::Config;

/// A predicate over hook points (`Selector::Filter`).
pub type PointFilter = Arc<dyn Fn(&HookPoint) -> bool + Send + Sync>;

/// Picks a set of hook points.
#[derive(Clone)]
pub enum Selector {
    /// Every hook point of the model.
    All,
    /// One point.
    Point(HookPoint),
    /// Names matching a glob where `*` matches any run of characters (`blocks.*.attn.hook_z`).
    Glob(String),
    /// Every point of one block.
    Layer(usize),
    /// Every point a predicate accepts, like TransformerLens's `names_filter`.
    Filter(PointFilter),
}

impl std::fmt::Debug for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::All => f.write_str("All"),
            Selector::Point(p) => write!(f, "Point({p})"),
            Selector::Glob(g) => write!(f, "Glob({g:?})"),
            Selector::Layer(l) => write!(f, "Layer({l})"),
            Selector::Filter(_) => f.write_str("Filter(..)"),
        }
    }
}

impl From<HookPoint> for Selector {
    fn from(p: HookPoint) -> Self {
        Selector::Point(p)
    }
}

impl Selector {
    /// Every point `pred` accepts.
    pub fn filter(pred: impl Fn(&HookPoint) -> bool + Send + Sync + 'static) -> Selector {
        Selector::Filter(Arc::new(pred))
    }

    /// Parses a user's pattern: `*`, a glob, or an exact TransformerLens name.
    pub fn parse(pattern: &str) -> Result<Selector> {
        if pattern == "*" || pattern == "all" {
            Ok(Selector::All)
        } else if pattern.contains('*') {
            Ok(Selector::Glob(pattern.to_string()))
        } else {
            Ok(Selector::Point(pattern.parse()?))
        }
    }

    /// The points of `all` (a model's points) this selector picks; an empty match is an error.
    pub fn resolve(&self, all: &[HookPoint], cfg: &Config) -> Result<Vec<HookPoint>> {
        match self {
            Selector::All => Ok(all.to_vec()),
            Selector::Point(p) => {
                HookPoint::parse_for(&p.to_string(), cfg)?;
                Ok(vec![*p])
            }
            Selector::Layer(l) => {
                if *l >= cfg.n_layers {
                    return Err(Error::OutOfRange {
                        what: "layer",
                        index: *l as i64,
                        limit: format!("{} layers", cfg.n_layers),
                    });
                }
                Ok(all
                    .iter()
                    .copied()
                    .filter(|p| p.layer() == Some(*l))
                    .collect())
            }
            Selector::Filter(pred) => Ok(all.iter().copied().filter(|p| pred(p)).collect()),
            Selector::Glob(g) => {
                let names: Vec<String> = all.iter().map(|p| p.to_string()).collect();
                let hits: Vec<HookPoint> = all
                    .iter()
                    .zip(&names)
                    .filter(|(_, n)| glob_match(g, n))
                    .map(|(p, _)| *p)
                    .collect();
                if hits.is_empty() {
                    return Err(Error::UnknownHook {
                        name: format!("{g}' (the pattern matches no hook point of this model"),
                        near: nearest_hint(g, names.iter().map(|s| s.as_str()), 3)
                            .replacen("; did", "); did", 1),
                    });
                }
                Ok(hits)
            }
        }
    }
}

/// Glob matching where `*` matches any (possibly empty) run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob() {
        assert!(glob_match("blocks.*.attn.hook_z", "blocks.11.attn.hook_z"));
        assert!(!glob_match("blocks.*.attn.hook_z", "blocks.11.attn.hook_q"));
        assert!(glob_match("*hook_resid_*", "blocks.0.hook_resid_pre"));
        assert!(glob_match("blocks.1.*", "blocks.1.hook_mlp_out"));
        assert!(!glob_match("blocks.1.*", "blocks.10.hook_mlp_out"));
        assert!(glob_match("*", "logits"));
        assert!(!glob_match("a*a", "a"));
    }
}
