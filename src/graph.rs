//! The stage DAG: edges from each stage to the stages that consume it.
//!
//! Built once from a validated pipeline; rejects cycles (naming every stage on the cycle), gives a
//! deterministic topological order (declaration order breaks ties) and renders itself for
//! `forge dag`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt::Write;

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::config::{ConfigError, Pipeline};

#[derive(Debug)]
pub struct Dag {
    graph: DiGraph<String, ()>,
    index: HashMap<String, NodeIndex>,
    /// Every stage, upstream before downstream.
    order: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Dot,
    Mermaid,
}

impl Dag {
    pub fn build(p: &Pipeline) -> Result<Dag, ConfigError> {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for name in p.stages.keys() {
            index.insert(name.clone(), graph.add_node(name.clone()));
        }
        for (name, stage) in &p.stages {
            for up in &stage.upstream {
                graph.add_edge(index[up], index[name], ());
            }
        }
        if let Some(cycle) = find_cycle(&graph) {
            let first = &p.stages[&graph[cycle[0]]];
            let mut names: Vec<&str> = cycle.iter().map(|n| graph[*n].as_str()).collect();
            names.push(names[0]);
            return Err(ConfigError::At {
                file: p.file.clone(),
                at: first.at,
                message: format!("stages form a cycle: {}", names.join(" → ")),
            });
        }
        // Kahn's algorithm; among ready stages, the one declared first goes first.
        let mut indegree: Vec<usize> = graph
            .node_indices()
            .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: BinaryHeap<Reverse<usize>> = graph
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .map(|n| Reverse(n.index()))
            .collect();
        let mut order = Vec::with_capacity(graph.node_count());
        while let Some(Reverse(i)) = ready.pop() {
            let n = NodeIndex::new(i);
            order.push(graph[n].clone());
            for m in graph.neighbors_directed(n, Direction::Outgoing) {
                indegree[m.index()] -= 1;
                if indegree[m.index()] == 0 {
                    ready.push(Reverse(m.index()));
                }
            }
        }
        Ok(Dag {
            graph,
            index,
            order,
        })
    }

    /// All stages, upstream first.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// `targets` and everything they depend on, upstream first; all stages when `targets` is empty.
    pub fn select(&self, targets: &[String]) -> Result<Vec<String>, String> {
        if targets.is_empty() {
            return Ok(self.order.clone());
        }
        let mut keep = BTreeSet::new();
        let mut stack = Vec::new();
        for t in targets {
            let n = *self
                .index
                .get(t)
                .ok_or_else(|| format!("no stage `{t}` (stages: {})", self.order.join(", ")))?;
            stack.push(n);
        }
        while let Some(n) = stack.pop() {
            if keep.insert(n) {
                stack.extend(self.graph.neighbors_directed(n, Direction::Incoming));
            }
        }
        Ok(self
            .order
            .iter()
            .filter(|s| keep.contains(&self.index[*s]))
            .cloned()
            .collect())
    }

    pub fn render(&self, format: Format) -> String {
        let mut s = String::new();
        let edges = |n: NodeIndex| -> Vec<&str> {
            let mut ups: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(n, Direction::Incoming)
                .collect();
            ups.sort();
            ups.into_iter().map(|u| self.graph[u].as_str()).collect()
        };
        match format {
            Format::Text => {
                let width = self.order.iter().map(String::len).max().unwrap_or(0);
                for name in &self.order {
                    let ups = edges(self.index[name]);
                    if ups.is_empty() {
                        let _ = writeln!(s, "{name}");
                    } else {
                        let _ = writeln!(s, "{name:<width$}  ← {}", ups.join(", "));
                    }
                }
            }
            Format::Dot => {
                s.push_str("digraph forge {\n  rankdir=LR;\n");
                for name in &self.order {
                    let _ = writeln!(s, "  \"{name}\";");
                }
                for name in &self.order {
                    for up in edges(self.index[name]) {
                        let _ = writeln!(s, "  \"{up}\" -> \"{name}\";");
                    }
                }
                s.push_str("}\n");
            }
            Format::Mermaid => {
                s.push_str("flowchart LR\n");
                for name in &self.order {
                    let ups = edges(self.index[name]);
                    if ups.is_empty() {
                        let _ = writeln!(s, "  {name}");
                    }
                    for up in ups {
                        let _ = writeln!(s, "  {up} --> {name}");
                    }
                }
            }
        }
        s
    }
}

/// One cycle, as the nodes along it, or None when the graph is acyclic.
fn find_cycle(g: &DiGraph<String, ()>) -> Option<Vec<NodeIndex>> {
    let scc = tarjan_scc(g).into_iter().find(|c| c.len() > 1)?;
    let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
    let start = *members.iter().next()?;
    // Depth-first walk inside the component until we come back to `start`.
    let mut path = vec![start];
    let mut seen = BTreeSet::from([start]);
    fn walk(
        g: &DiGraph<String, ()>,
        members: &BTreeSet<NodeIndex>,
        start: NodeIndex,
        path: &mut Vec<NodeIndex>,
        seen: &mut BTreeSet<NodeIndex>,
    ) -> bool {
        let here = *path.last().expect("path starts non-empty");
        let mut next: Vec<NodeIndex> = g.neighbors_directed(here, Direction::Outgoing).collect();
        next.sort();
        for n in next {
            if n == start {
                return true;
            }
            if members.contains(&n) && seen.insert(n) {
                path.push(n);
                if walk(g, members, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(g, &members, start, &mut path, &mut seen).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dag(yaml: &str) -> Result<Dag, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = crate::config::parse(yaml, Path::new("forge.yaml"), dir.path(), &[])
            .map_err(|e| e.to_string())?;
        Dag::build(&p).map_err(|e| e.to_string())
    }

    const DIAMOND: &str = "stages:\n  d:\n    cmd: cat ${stages.b} ${stages.c}\n  b:\n    cmd: cat ${stages.a}\n  c:\n    cmd: x\n    needs: [a]\n  a:\n    cmd: echo\n  lone:\n    cmd: echo\n";

    #[test]
    fn topological_order_breaks_ties_by_declaration() {
        let d = dag(DIAMOND).unwrap();
        assert_eq!(d.order(), ["a", "b", "c", "d", "lone"]);
        assert_eq!(d.select(&["c".into()]).unwrap(), ["a", "c"]);
        assert_eq!(d.select(&["d".into()]).unwrap(), ["a", "b", "c", "d"]);
        assert!(
            d.select(&["nope".into()])
                .unwrap_err()
                .contains("no stage `nope`")
        );
    }

    #[test]
    fn cycle_is_reported_with_its_stage_names() {
        let e = dag("stages:\n  x:\n    cmd: echo\n  a:\n    cmd: ${stages.c}\n  b:\n    cmd: ${stages.a}\n  c:\n    cmd: ${stages.b}\n").unwrap_err();
        assert!(
            e.starts_with("forge.yaml:4:3: stages form a cycle: a → b → c → a"),
            "{e}"
        );
    }

    #[test]
    fn renders_every_format() {
        let d = dag(DIAMOND).unwrap();
        assert!(d.render(Format::Text).contains("d     ← b, c\n"));
        let dot = d.render(Format::Dot);
        assert!(dot.starts_with("digraph forge {") && dot.contains("\"a\" -> \"c\";"));
        let m = d.render(Format::Mermaid);
        assert!(m.contains("  b --> d\n") && m.contains("  lone\n"));
    }
}
