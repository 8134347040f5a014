//! The rules of the dependency graph, as pure functions over values in
//! memory: the release rule (what a waiting task does given the states of
//! its dependencies), the topological order of a batch of new tasks, and the
//! cycle check of a changed task's dependencies.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{OnDependencyFailure, TaskId, TaskState};

/// What a task that waits for its dependencies does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Every dependency is satisfied: its first attempt goes out.
    Dispatch,
    /// A dependency ended unsuccessfully and the policy is `skip`.
    Skip,
    /// Some dependency has not ended yet.
    Wait,
}

/// The release rule: a task with `policy` whose dependencies are in
/// `dependencies` is skipped as soon as one ended in a way the policy does
/// not accept, dispatched once all are satisfied, and waits otherwise.
pub fn readiness(
    policy: OnDependencyFailure,
    dependencies: impl IntoIterator<Item = TaskState>,
) -> Readiness {
    let mut all_satisfied = true;
    for s in dependencies {
        match s.satisfies(policy) {
            Some(true) => {}
            Some(false) => return Readiness::Skip,
            None => all_satisfied = false,
        }
    }
    if all_satisfied {
        Readiness::Dispatch
    } else {
        Readiness::Wait
    }
}

/// What a task in `state` waits for: the names of its unfinished
/// dependencies among `dependencies` (name, state) while it is `waiting`,
/// none otherwise.
pub fn blocked_by(state: TaskState, dependencies: &[(String, TaskState)]) -> Vec<String> {
    if state != TaskState::Waiting {
        return Vec::new();
    }
    dependencies
        .iter()
        .filter(|(_, s)| !s.is_terminal())
        .map(|(n, _)| n.clone())
        .collect()
}

/// Kahn's algorithm over `edges[i]` = the batch indexes task `i` depends on.
/// Returns dependencies before dependents, or the tasks left in a cycle.
///
/// # Errors
/// The indexes of the tasks on or behind a cycle.
pub fn topological_order(edges: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = edges.len();
    let mut pending: Vec<usize> = edges.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in edges.iter().enumerate() {
        for &d in deps {
            dependents[d].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if order.len() == n {
        Ok(order)
    } else {
        Err((0..n).filter(|&i| pending[i] > 0).collect())
    }
}

/// Whether making `task` depend on `deps` closes a cycle, given the existing
/// `(task, dependency)` edges: true if `task` is reachable from any new dependency.
pub fn creates_cycle(task: TaskId, deps: &[TaskId], edges: &[(TaskId, TaskId)]) -> bool {
    let mut graph: HashMap<TaskId, Vec<TaskId>> = HashMap::new();
    for &(t, d) in edges {
        if t != task {
            graph.entry(t).or_default().push(d);
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<TaskId> = deps.to_vec();
    while let Some(n) = stack.pop() {
        if n == task {
            return true;
        }
        if seen.insert(n)
            && let Some(next) = graph.get(&n)
        {
            stack.extend(next.iter().copied());
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topological_order_puts_dependencies_first() {
        // 0 depends on 2, 2 depends on 1.
        let order = topological_order(&[vec![2], vec![], vec![1]]).unwrap();
        assert_eq!(order, vec![1, 2, 0]);
    }

    #[test]
    fn topological_order_reports_the_cycle() {
        // 0 -> 1 -> 2 -> 1, 3 free.
        let cycle = topological_order(&[vec![1], vec![2], vec![1], vec![]]).unwrap_err();
        assert_eq!(cycle, vec![0, 1, 2]);
    }

    #[test]
    fn cycle_through_existing_edges() {
        let (a, b, c) = (TaskId::new(), TaskId::new(), TaskId::new());
        // b depends on a, c depends on b.
        let edges = [(b, a), (c, b)];
        assert!(creates_cycle(a, &[c], &edges));
        assert!(!creates_cycle(c, &[a], &edges));
        assert!(creates_cycle(a, &[a], &edges));
    }

    #[test]
    fn the_release_rule() {
        use OnDependencyFailure::{Run, Skip};
        use TaskState::*;
        assert_eq!(readiness(Skip, []), Readiness::Dispatch);
        assert_eq!(readiness(Skip, [Succeeded, Running]), Readiness::Wait);
        assert_eq!(readiness(Skip, [Running, Failed]), Readiness::Skip);
        assert_eq!(readiness(Run, [Failed, Skipped]), Readiness::Dispatch);
        assert_eq!(readiness(Run, [Failed, Queued]), Readiness::Wait);
    }
}
