//! A refused policy shows up where its author looks: as a Warning Event
//! on the object (`kubectl describe` lists it), one per refused version and
//! node. Cluster-scoped objects' Events go to `default`, as the API
//! server's own do.

use k8s_openapi::{
    api::core::v1::{Event, EventSource, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};

use super::policies::Refusal;

pub const REASON: &str = "PolicyRefused";

fn event_name(r: &Refusal, node: &str) -> String {
    let mut key = Vec::new();
    for part in [
        r.uid.as_deref().unwrap_or(&r.name),
        &r.resource_version,
        node,
    ] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    format!("{}.{:016x}", r.name, crate::identity::fnv1a(&key))
}

pub fn event(r: &Refusal, node: &str) -> Event {
    let namespace = r.namespace.clone().unwrap_or_else(|| "default".into());
    let now = Timestamp::now();
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(r, node)),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(r.access.api_version()),
            kind: Some(r.access.kind.to_owned()),
            name: Some(r.name.clone()),
            namespace: r.namespace.clone(),
            uid: r.uid.clone(),
            resource_version: Some(r.resource_version.clone()),
            ..ObjectReference::default()
        },
        reason: Some(REASON.into()),
        message: Some(r.message.clone()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("palisade".into()),
            host: Some(node.to_owned()),
        }),
        reporting_component: Some("palisade.dev/node".into()),
        reporting_instance: Some(node.to_owned()),
        action: Some("Parse".into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        ..Event::default()
    }
}

/// Posts the Event in the background; a failure is logged, not retried
/// (the error is in the status and the metrics either way).
pub fn report(client: &Client, r: &Refusal, node: &str) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let event = event(r, node);
    let namespace = event.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
    runtime.spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!("posting the Event for a refused policy: {e}");
        }
    });
}
