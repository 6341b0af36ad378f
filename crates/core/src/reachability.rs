//! ping-nodes' work: every distinct destination node once, in parallel.

use std::collections::BTreeMap;
use std::time::Instant;

use log::info;
use rayon::prelude::*;

use crate::cli::Probe;
use crate::context::Context;
use crate::ping;
use crate::report::{Outcome, Stage, Target};
use crate::service::Service;

/// A node and what is needed to check it.
#[derive(Debug, Clone)]
pub struct NodePlan<'a> {
    /// The node.
    pub node: &'a str,
    /// The services that push to it (configuration names).
    pub services: Vec<String>,
    /// Options of the first service using it.
    pub service: &'a Service,
}

/// Every distinct node of `services`, with the services using it.
pub fn nodes(services: &[Service]) -> Vec<NodePlan<'_>> {
    let mut nodes: BTreeMap<&str, NodePlan<'_>> = BTreeMap::new();
    for service in services {
        for node in &service.nodes {
            nodes
                .entry(node)
                .or_insert_with(|| NodePlan {
                    node,
                    services: Vec::new(),
                    service,
                })
                .services
                .push(service.name.clone());
        }
    }
    nodes.into_values().collect()
}

/// Checks every node once.
pub fn run(ctx: &Context, services: &[Service], probe: Probe) -> Vec<Outcome> {
    nodes(services)
        .par_iter()
        .map(|plan| check(ctx, plan, probe))
        .collect()
}

fn check(ctx: &Context, plan: &NodePlan<'_>, probe: Probe) -> Outcome {
    let started = Instant::now();
    let timeout = ctx.config.timeouts.ping;
    let result = ctx.runner.retry(
        ctx.config.retries.ping,
        &format!("checking node `{}`", plan.node),
        None,
        |_| true,
        || match probe {
            Probe::Icmp => ping::ping(&ctx.runner, plan.node, &plan.service.ping_options, timeout),
            Probe::Ssh => {
                ping::probe_ssh(&ctx.runner, plan.node, &plan.service.ssh_options, timeout)
            }
        },
    );
    let outcome = Outcome {
        service: None,
        target: Target::Node(plan.node.to_string()),
        stage: Stage::Ping,
        duration: started.elapsed(),
        failure: None,
        services: plan.services.clone(),
    };
    crate::progress::inc();
    match result {
        Ok(()) => {
            info!(
                "node `{}` is reachable ({:.2}s)",
                plan.node,
                started.elapsed().as_secs_f64()
            );
            outcome
        }
        Err(f) => {
            log::error!(
                "node `{}` used by {} is unreachable: {f}",
                plan.node,
                plan.services.join(", ")
            );
            Outcome {
                failure: Some(f),
                ..outcome
            }
        }
    }
}
