//! A workflow's graph as the web console draws it
//! (`GET /v1/workflows/{wf}/graph`): folded on the server so its size is
//! bounded whatever the workflow's, and laid out in layers.
//!
//! Folding, in order: a group's children are counted in their group's node;
//! a chain of at least [`CHAIN_MIN`] plain tasks, each the only successor
//! of the one before and the only predecessor of the next, becomes one
//! `chain` node; at least [`SET_MIN`] tasks or chains with the same
//! predecessors and the same successors (a fan-out) become one `set` node.
//! If more than [`MAX_NODES`] nodes remain (`truncated` says so): a graph
//! of at most [`MAX_LAYERS`] layers keeps the [`PER_LAYER`] − 1 largest
//! nodes of each layer and folds the rest of it into one `more` node; a
//! deeper one is cut into [`MAX_LAYERS`] bands of layers, one node each.
//!
//! Layout: longest-path layers (a node's layer is one more than its
//! deepest predecessor's), then nodes ordered within their layer by the
//! mean position of their predecessors (two sweeps), so the browser only
//! places boxes: no layout library, and the layers always match the folding.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use utoipa::ToSchema;

use super::{App, AppError};
use crate::domain::{TaskCounts, TaskId, TaskState, WorkflowId};
use crate::store::GraphTask;

/// Chains at least this long are folded into one node.
pub const CHAIN_MIN: usize = 4;
/// At least this many tasks (or chains) with the same neighbours are
/// folded into one node.
pub const SET_MIN: usize = 8;
/// The most nodes a summary shows before bands are merged.
pub const MAX_NODES: usize = 1_500;
/// The most layers (bands) once nodes are merged.
pub const MAX_LAYERS: usize = 60;
/// The most nodes of one band once nodes are merged.
pub const PER_LAYER: usize = 25;
/// The most edges a summary carries.
pub const MAX_EDGES: usize = 10_000;

/// What a node of the summary stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// One task.
    Task,
    /// A group task; `count` and `states` are its children's (the task
    /// itself until it was opened).
    Group,
    /// A chain of tasks, one after the other, from `label`'s first to last.
    Chain,
    /// Tasks (or chains) with the same predecessors and successors.
    Set,
    /// The rest of a band of a very large graph.
    More,
}

/// One node of a workflow's folded graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphNode {
    /// The task's id for `task` and `group`; `chain:<id>`, `set:<id>`
    /// (the id of its first task) or `more:<band>` otherwise.
    pub id: String,
    /// What it stands for.
    pub kind: NodeKind,
    /// The task's name; `first … last` for a chain; `N tasks: first, …`
    /// for a set or the rest of a band.
    pub label: String,
    /// The task a `task` or `group` node is.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub task_id: Option<TaskId>,
    /// How many tasks it stands for.
    pub count: u64,
    /// Its tasks' states summed up: running if any runs, else failed or
    /// timed out if any did, else queued, waiting, cancelled, skipped,
    /// and succeeded only if all did.
    pub state: TaskState,
    /// How many of its tasks are in each state.
    pub states: TaskCounts,
    /// Its column, from 0: one more than its deepest predecessor's.
    pub layer: u32,
    /// Its place in its column, from 0.
    pub order: u32,
}

/// A dependency between two nodes: `to` waits for `from`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphEdge {
    /// The node depended on.
    pub from: String,
    /// The node that depends on it.
    pub to: String,
}

/// A workflow's graph, folded and laid out (`GET /v1/workflows/{wf}/graph`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphSummary {
    /// The workflow.
    pub workflow_id: WorkflowId,
    /// How many tasks it holds (group children included).
    pub tasks: u64,
    /// How many of them are in each state.
    pub task_counts: TaskCounts,
    /// The nodes, by layer then order.
    pub nodes: Vec<GraphNode>,
    /// The edges between nodes, each once.
    pub edges: Vec<GraphEdge>,
    /// How many layers (columns) there are.
    pub layers: u32,
    /// Whether anything was folded (a chain, a set, a band's rest).
    pub folded: bool,
    /// Whether bands were merged or edges left out to bound the size.
    pub truncated: bool,
    /// The workflow's last event when the summary was read (0: none): pass
    /// it as `Last-Event-ID` to `GET .../events` for the changes since.
    pub last_event_id: i64,
}

impl App {
    /// The folded graph of a workflow that exists.
    ///
    /// # Errors
    /// No such workflow; a store failure, or stored data that does not parse.
    pub async fn graph_summary(&self, workflow: &str) -> Result<GraphSummary, AppError> {
        let id = self.existing_workflow(workflow).await?;
        // Read first: the tasks read after it reflect every event up to it.
        let last_event_id = self.store().last_event_id(id).await?;
        let tasks = self.store().graph_tasks(id).await?;
        let edges = self.store().graph_edges(id).await?;
        let mut summary = summarise(id, tasks, &edges);
        summary.last_event_id = last_event_id;
        Ok(summary)
    }
}

/// A node while folding: what it stands for.
#[derive(Debug, Clone)]
struct Unit {
    id: String,
    kind: NodeKind,
    label: String,
    task_id: Option<TaskId>,
    first: String,
    states: BTreeMap<TaskState, u64>,
}

impl Unit {
    fn count(&self) -> u64 {
        self.states.values().sum()
    }

    fn absorb(&mut self, other: &Unit) {
        for (s, n) in &other.states {
            *self.states.entry(*s).or_default() += n;
        }
    }
}

/// The one state a node of many tasks shows.
fn summary_state(states: &BTreeMap<TaskState, u64>) -> TaskState {
    use TaskState::*;
    [
        Running, Failed, TimedOut, Queued, Waiting, Cancelled, Skipped,
    ]
    .into_iter()
    .find(|s| states.get(s).is_some_and(|&n| n > 0))
    .unwrap_or(Succeeded)
}

/// A graph of units: edges as sorted, deduplicated neighbour lists.
struct Graph {
    units: Vec<Unit>,
    preds: Vec<Vec<usize>>,
    succs: Vec<Vec<usize>>,
}

impl Graph {
    /// Units with edges `(from, to)` between them (indices), self-loops and
    /// repeats dropped.
    fn new(units: Vec<Unit>, edges: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let n = units.len();
        let (mut preds, mut succs) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for (a, b) in edges {
            if a != b {
                succs[a].push(b);
                preds[b].push(a);
            }
        }
        for l in preds.iter_mut().chain(succs.iter_mut()) {
            l.sort_unstable();
            l.dedup();
        }
        Self {
            units,
            preds,
            succs,
        }
    }

    /// Merges units by `target[i]` (the index of the new unit each goes
    /// to, in `0..m`), given the new units.
    fn merge(&self, target: &[usize], units: Vec<Unit>) -> Graph {
        let edges = self
            .succs
            .iter()
            .enumerate()
            .flat_map(|(a, s)| s.iter().map(move |&b| (target[a], target[b])));
        Graph::new(units, edges.collect::<Vec<_>>())
    }

    /// Longest-path layers (the graph is acyclic; a cycle, which the store
    /// never holds, would leave its nodes in layer 0).
    fn layers(&self) -> Vec<usize> {
        let n = self.units.len();
        let mut layer = vec![0usize; n];
        let mut indeg: Vec<usize> = self.preds.iter().map(Vec::len).collect();
        let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        while let Some(u) = ready.pop() {
            for &v in &self.succs[u] {
                layer[v] = layer[v].max(layer[u] + 1);
                indeg[v] -= 1;
                if indeg[v] == 0 {
                    ready.push(v);
                }
            }
        }
        layer
    }
}

/// Folds and lays out a workflow's tasks and edges `(task, dependency)`.
pub fn summarise(
    workflow: WorkflowId,
    tasks: Vec<GraphTask>,
    edges: &[(TaskId, TaskId)],
) -> GraphSummary {
    let mut counts = TaskCounts::default();
    for t in &tasks {
        *counts.0.entry(t.state).or_default() += 1;
    }
    let total = tasks.len() as u64;
    let mut children: HashMap<TaskId, BTreeMap<TaskState, u64>> = HashMap::new();
    for t in tasks.iter().filter(|t| t.parent.is_some()) {
        if let Some(p) = t.parent {
            *children.entry(p).or_default().entry(t.state).or_default() += 1;
        }
    }
    // One unit per top-level task.
    let top: Vec<GraphTask> = tasks.into_iter().filter(|t| t.parent.is_none()).collect();
    let index: HashMap<TaskId, usize> = top.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
    let units: Vec<Unit> = top
        .iter()
        .map(|t| {
            let states = match children.remove(&t.id) {
                Some(c) if t.group => c,
                _ => BTreeMap::from([(t.state, 1)]),
            };
            Unit {
                id: t.id.to_string(),
                kind: if t.group {
                    NodeKind::Group
                } else {
                    NodeKind::Task
                },
                label: t.name.clone(),
                task_id: Some(t.id),
                first: t.name.clone(),
                states,
            }
        })
        .collect();
    let task_edges = edges
        .iter()
        .filter_map(|(task, dep)| Some((*index.get(dep)?, *index.get(task)?)));
    let graph = Graph::new(units, task_edges.collect::<Vec<_>>());
    let graph = fold_chains(&graph);
    let graph = fold_sets(&graph);
    let folded = graph
        .units
        .iter()
        .any(|u| matches!(u.kind, NodeKind::Chain | NodeKind::Set));
    let (graph, truncated) = if graph.units.len() > MAX_NODES {
        (fold_bands(&graph), true)
    } else {
        (graph, false)
    };
    let (nodes, edges, layers, cut) = lay_out(&graph);
    GraphSummary {
        workflow_id: workflow,
        tasks: total,
        task_counts: counts,
        nodes,
        edges,
        layers,
        folded: folded || truncated,
        truncated: truncated || cut,
        last_event_id: 0,
    }
}

/// Whether unit `b` continues a chain through `a`.
fn links(g: &Graph, a: usize, b: usize) -> bool {
    let plain = |i: usize| g.units[i].kind == NodeKind::Task;
    plain(a) && plain(b) && g.succs[a] == [b] && g.preds[b] == [a]
}

/// Folds chains of at least [`CHAIN_MIN`] plain tasks.
fn fold_chains(g: &Graph) -> Graph {
    let n = g.units.len();
    let mut target = vec![usize::MAX; n];
    let mut units = Vec::new();
    for start in 0..n {
        if target[start] != usize::MAX {
            continue;
        }
        let continues = g.preds[start].len() == 1 && links(g, g.preds[start][0], start);
        if continues {
            continue; // reached from the start of its chain
        }
        let mut chain = vec![start];
        let mut at = start;
        while g.succs[at].len() == 1 && links(g, at, g.succs[at][0]) {
            at = g.succs[at][0];
            chain.push(at);
        }
        if chain.len() >= CHAIN_MIN {
            let (first, last) = (&g.units[chain[0]], &g.units[at]);
            let mut unit = Unit {
                id: format!("chain:{}", first.id),
                kind: NodeKind::Chain,
                label: format!("{} … {}", first.label, last.label),
                task_id: None,
                first: first.first.clone(),
                states: BTreeMap::new(),
            };
            for &i in &chain {
                unit.absorb(&g.units[i]);
                target[i] = units.len();
            }
            units.push(unit);
        } else {
            for &i in &chain {
                target[i] = units.len();
                units.push(g.units[i].clone());
            }
        }
    }
    // Anything not reached (only inside a cycle, which cannot be) stays.
    for (t, unit) in target.iter_mut().zip(&g.units) {
        if *t == usize::MAX {
            *t = units.len();
            units.push(unit.clone());
        }
    }
    g.merge(&target, units)
}

/// Folds at least [`SET_MIN`] tasks or chains with the same neighbours.
fn fold_sets(g: &Graph) -> Graph {
    let n = g.units.len();
    let mut classes: HashMap<(&[usize], &[usize]), Vec<usize>> = HashMap::new();
    for i in 0..n {
        if matches!(g.units[i].kind, NodeKind::Task | NodeKind::Chain) {
            classes
                .entry((&g.preds[i], &g.succs[i]))
                .or_default()
                .push(i);
        }
    }
    let mut set_of: HashMap<usize, usize> = HashMap::new();
    let mut sets: Vec<Vec<usize>> = Vec::new();
    for members in classes.into_values().filter(|m| m.len() >= SET_MIN) {
        for &i in &members {
            set_of.insert(i, sets.len());
        }
        sets.push(members);
    }
    let mut target = vec![0; g.units.len()];
    let mut units = Vec::new();
    let mut placed: HashMap<usize, usize> = HashMap::new();
    for (i, t) in target.iter_mut().enumerate() {
        match set_of.get(&i) {
            None => {
                *t = units.len();
                units.push(g.units[i].clone());
            }
            Some(&s) => {
                *t = *placed.entry(s).or_insert_with(|| {
                    units.push(many("set", &sets[s], g));
                    units.len() - 1
                });
            }
        }
    }
    g.merge(&target, units)
}

/// One node for many units (ascending indices): `kind_word:<first id>`.
fn many(kind_word: &str, members: &[usize], g: &Graph) -> Unit {
    let first = &g.units[members[0]];
    let mut unit = Unit {
        id: format!("{kind_word}:{}", first.id),
        kind: if kind_word == "set" {
            NodeKind::Set
        } else {
            NodeKind::More
        },
        label: String::new(),
        task_id: None,
        first: first.first.clone(),
        states: BTreeMap::new(),
    };
    for &i in members {
        unit.absorb(&g.units[i]);
    }
    let n = unit.count();
    unit.label = match members.get(1) {
        Some(&second) => format!("{n} tasks: {}, {}, …", first.first, g.units[second].first),
        None => format!("{n} tasks: {}", first.first),
    };
    unit
}

/// Bounds a large graph: each layer keeps its [`PER_LAYER`] − 1 largest
/// nodes and one `more` node for the rest, or, deeper than [`MAX_LAYERS`],
/// each band of layers becomes one node.
fn fold_bands(g: &Graph) -> Graph {
    let layer = g.layers();
    let depth = layer.iter().max().map_or(1, |m| m + 1);
    let bands = depth.min(MAX_LAYERS);
    let mut by_band: Vec<Vec<usize>> = vec![Vec::new(); bands];
    for (i, l) in layer.iter().enumerate() {
        by_band[l * bands / depth].push(i);
    }
    let mut target = vec![0; g.units.len()];
    let mut units = Vec::new();
    for (b, mut members) in by_band.into_iter().enumerate() {
        // A band of several layers is one node: its nodes may depend on
        // each other, and more columns than bands would come back.
        let keep = if bands < depth { 1 } else { PER_LAYER };
        if members.len() <= keep {
            for i in members {
                target[i] = units.len();
                units.push(g.units[i].clone());
            }
            continue;
        }
        members.sort_by_key(|&i| (std::cmp::Reverse(g.units[i].count()), i));
        let rest = members.split_off(keep - 1);
        for i in members {
            target[i] = units.len();
            units.push(g.units[i].clone());
        }
        let mut rest = rest;
        rest.sort_unstable();
        let mut more = many("more", &rest, g);
        more.id = format!("more:{b}");
        for &i in &rest {
            target[i] = units.len();
        }
        units.push(more);
    }
    g.merge(&target, units)
}

/// Layers, orders within layers, and the views.
fn lay_out(g: &Graph) -> (Vec<GraphNode>, Vec<GraphEdge>, u32, bool) {
    let layer = g.layers();
    let depth = layer.iter().max().map_or(0, |m| m + 1);
    let mut columns: Vec<Vec<usize>> = vec![Vec::new(); depth];
    for (i, &l) in layer.iter().enumerate() {
        columns[l].push(i);
    }
    // Creation order first, then by the mean place of predecessors.
    let mut place = vec![0f64; g.units.len()];
    for col in &columns {
        for (k, &i) in col.iter().enumerate() {
            place[i] = k as f64;
        }
    }
    for _ in 0..2 {
        for col in columns.iter_mut().skip(1) {
            let key = |i: usize| {
                let p = &g.preds[i];
                if p.is_empty() {
                    place[i]
                } else {
                    p.iter().map(|&j| place[j]).sum::<f64>() / p.len() as f64
                }
            };
            let mut keyed: Vec<(f64, usize)> = col.iter().map(|&i| (key(i), i)).collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            *col = keyed.into_iter().map(|(_, i)| i).collect();
            for (k, &i) in col.iter().enumerate() {
                place[i] = k as f64;
            }
        }
    }
    let mut nodes = Vec::with_capacity(g.units.len());
    for (l, col) in columns.iter().enumerate() {
        for (k, &i) in col.iter().enumerate() {
            let u = &g.units[i];
            nodes.push(GraphNode {
                id: u.id.clone(),
                kind: u.kind,
                label: u.label.clone(),
                task_id: u.task_id,
                count: u.count(),
                state: summary_state(&u.states),
                states: TaskCounts(u.states.clone()),
                layer: l as u32,
                order: k as u32,
            });
        }
    }
    let mut edges = Vec::new();
    let mut cut = false;
    'all: for (a, succs) in g.succs.iter().enumerate() {
        for &b in succs {
            if edges.len() == MAX_EDGES {
                cut = true;
                break 'all;
            }
            edges.push(GraphEdge {
                from: g.units[a].id.clone(),
                to: g.units[b].id.clone(),
            });
        }
    }
    (nodes, edges, depth as u32, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(i: u32, state: TaskState) -> GraphTask {
        GraphTask {
            id: TaskId::new(),
            name: format!("t{i}"),
            state,
            group: false,
            parent: None,
        }
    }

    fn wf() -> WorkflowId {
        WorkflowId::new()
    }

    #[test]
    fn a_small_graph_is_drawn_whole_in_layers() {
        // a -> b, a -> c, (b, c) -> d
        let t: Vec<GraphTask> = (0..4).map(|i| task(i, TaskState::Waiting)).collect();
        let e = [
            (t[1].id, t[0].id),
            (t[2].id, t[0].id),
            (t[3].id, t[1].id),
            (t[3].id, t[2].id),
        ];
        let s = summarise(wf(), t.clone(), &e);
        assert_eq!(s.nodes.len(), 4);
        assert_eq!(s.edges.len(), 4);
        assert_eq!(s.layers, 3);
        assert!(!s.folded && !s.truncated);
        let layer = |id: TaskId| {
            s.nodes
                .iter()
                .find(|n| n.task_id == Some(id))
                .map(|n| n.layer)
        };
        assert_eq!(layer(t[0].id), Some(0));
        assert_eq!(layer(t[3].id), Some(2));
    }

    #[test]
    fn a_long_chain_is_one_node_with_its_states() {
        let t: Vec<GraphTask> = (0..10)
            .map(|i| match i {
                0 => task(i, TaskState::Succeeded),
                1 => task(i, TaskState::Running),
                _ => task(i, TaskState::Waiting),
            })
            .collect();
        let e: Vec<_> = (1..10).map(|i| (t[i].id, t[i - 1].id)).collect();
        let s = summarise(wf(), t, &e);
        assert_eq!(s.nodes.len(), 1);
        let n = &s.nodes[0];
        assert_eq!(
            (n.kind, n.count, n.state),
            (NodeKind::Chain, 10, TaskState::Running)
        );
        assert_eq!(n.label, "t0 … t9");
        assert_eq!(n.states.0.get(&TaskState::Waiting), Some(&8));
    }

    #[test]
    fn a_fan_out_is_one_set_and_groups_count_their_children() {
        // root -> 100 tasks -> group (with 3 children)
        let root = task(0, TaskState::Succeeded);
        let mut group = task(1, TaskState::Running);
        group.group = true;
        let mut t = vec![root.clone(), group.clone()];
        let mut e = Vec::new();
        for i in 0..100 {
            let x = task(i + 2, TaskState::Succeeded);
            e.push((x.id, root.id));
            e.push((group.id, x.id));
            t.push(x);
        }
        for (i, st) in [TaskState::Succeeded, TaskState::Running, TaskState::Queued]
            .into_iter()
            .enumerate()
        {
            let mut c = task(200 + i as u32, st);
            c.parent = Some(group.id);
            t.push(c);
        }
        let s = summarise(wf(), t, &e);
        assert_eq!(s.tasks, 105);
        assert_eq!(s.nodes.len(), 3, "{:?}", s.nodes);
        assert_eq!(s.edges.len(), 2);
        let set = s.nodes.iter().find(|n| n.kind == NodeKind::Set).unwrap();
        assert_eq!((set.count, set.layer), (100, 1));
        let g = s.nodes.iter().find(|n| n.kind == NodeKind::Group).unwrap();
        assert_eq!((g.count, g.state, g.layer), (3, TaskState::Running, 2));
    }

    #[test]
    fn a_wide_graph_keeps_each_layers_largest_nodes_and_one_for_the_rest() {
        // 2,000 pairs a -> b: nothing folds, 4,000 nodes in two layers.
        let t: Vec<GraphTask> = (0..4_000).map(|i| task(i, TaskState::Waiting)).collect();
        let e: Vec<_> = (0..2_000).map(|i| (t[2 * i + 1].id, t[2 * i].id)).collect();
        let s = summarise(wf(), t, &e);
        assert!(s.truncated);
        assert_eq!(s.layers, 2);
        assert_eq!(s.nodes.len(), 2 * PER_LAYER);
        let more: Vec<_> = s
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::More)
            .collect();
        assert_eq!(more.len(), 2);
        assert_eq!(more[0].count, 2_000 - (PER_LAYER as u64 - 1));
        assert_eq!(s.nodes.iter().map(|n| n.count).sum::<u64>(), 4_000);
    }

    #[test]
    fn any_graph_is_bounded() {
        // A ladder: two tasks per layer, each depending on both of the
        // layer before, 5,000 layers deep: nothing folds as a chain or a set.
        let t: Vec<GraphTask> = (0..10_000).map(|i| task(i, TaskState::Waiting)).collect();
        let mut e = Vec::new();
        for l in 1..5_000 {
            for a in 0..2 {
                for b in 0..2 {
                    e.push((t[2 * l + a].id, t[2 * (l - 1) + b].id));
                }
            }
        }
        let s = summarise(wf(), t, &e);
        assert!(s.truncated);
        assert!(s.nodes.len() <= MAX_LAYERS * PER_LAYER, "{}", s.nodes.len());
        assert!(s.layers as usize <= MAX_LAYERS);
        assert_eq!(s.nodes.iter().map(|n| n.count).sum::<u64>(), 10_000);
    }
}
