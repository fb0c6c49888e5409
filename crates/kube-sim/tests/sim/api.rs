//! API semantics through kube-rs: conflicts, patches, apply, selectors, watches with
//! bookmarks, `410 Gone` and re-listing after an API server restart, CRD schemas.

use cairn_kube_sim::{Sim, SimOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use std::time::Duration;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client(sim: &Sim) -> Client {
    let mut config = kube::Config::new(sim.url().parse().unwrap());
    config.default_namespace = "default".into();
    Client::try_from(config).unwrap()
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

#[test]
fn stale_writes_conflict_and_patches_merge() {
    let sim = Sim::start(SimOptions::default());
    rt().block_on(async {
    let api: Api<ConfigMap> = Api::default_namespaced(client(&sim));
    let created = api.create(&PostParams::default(), &cm("a", json!({"app": "x"}))).await.unwrap();
    let mut newer = created.clone();
    newer.data.as_mut().unwrap().insert("k".into(), "2".into());
    api.replace("a", &PostParams::default(), &newer).await.unwrap();
    let err = api.replace("a", &PostParams::default(), &created).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 409), "{err:?}");
    api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"m": "1"}}))).await.unwrap();
    let ops: json_patch::Patch = serde_json::from_value(json!([{"op": "replace", "path": "/data/m", "value": "3"}])).unwrap();
    api.patch("a", &PatchParams::default(), &Patch::<()>::Json(ops)).await.unwrap();
    let got = api.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["m"], "3");
    // Server-side apply: a second manager conflicts unless it forces.
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {"x": "1"}});
    api.patch("b", &PatchParams::apply("one"), &Patch::Apply(&applied)).await.unwrap();
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}, "data": {"x": "2"}});
    let err = api.patch("b", &PatchParams::apply("two"), &Patch::Apply(&other)).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 409), "{err:?}");
    api.patch("b", &PatchParams::apply("two").force(), &Patch::Apply(&other)).await.unwrap();
    assert_eq!(api.get("b").await.unwrap().data.unwrap()["x"], "2");
    // Selectors.
    let by_label = api.list(&ListParams::default().labels("app in (x,y)")).await.unwrap();
    assert_eq!(by_label.items.len(), 1);
    let by_field = api.list(&ListParams::default().fields("metadata.name=b")).await.unwrap();
    assert_eq!(by_field.items.len(), 1);
    let err = api.list(&ListParams::default().fields("data.k=v")).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 400), "{err:?}");
    // Pages.
    for i in 0..5 {
        api.create(&PostParams::default(), &cm(&format!("p{i}"), json!({"page": "y"}))).await.unwrap();
    }
    let page = api.list(&ListParams::default().labels("page").limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = api
        .list(&ListParams::default().labels("page").limit(10).continue_token(page.metadata.continue_.as_deref().unwrap()))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    });
}

#[test]
fn watches_resume_and_a_restart_forces_a_relist() {
    let sim = Sim::start(SimOptions {
        bookmark_interval: Duration::from_millis(200),
        ..SimOptions::default()
    });
    let sim = std::sync::Arc::new(sim);
    rt().block_on(async {
        let c = client(&sim);
        let api: Api<ConfigMap> = Api::default_namespaced(c.clone());
        let first = api
            .create(&PostParams::default(), &cm("before", json!({})))
            .await
            .unwrap();
        let old_rv = first.metadata.resource_version.clone().unwrap();
        // A raw watch sees bookmarks.
        let mut raw = api
            .watch(
                &WatchParams {
                    bookmarks: true,
                    ..WatchParams::default()
                }
                .timeout(5),
                &old_rv,
            )
            .await
            .unwrap()
            .boxed();
        let mut bookmark = false;
        while let Some(Ok(e)) = raw.next().await {
            if matches!(e, WatchEvent::Bookmark(_)) {
                bookmark = true;
                break;
            }
        }
        assert!(bookmark, "no BOOKMARK within the watch");
        // kube-rs' watcher keeps a complete view across a restart.
        let (reader, writer) = kube::runtime::reflector::store::<ConfigMap>();
        let stream =
            kube::runtime::reflector(writer, watcher(api.clone(), watcher::Config::default()))
                .applied_objects()
                .boxed();
        let driver = tokio::spawn(stream.for_each(|_| async {}));
        let names = |r: &kube::runtime::reflector::Store<ConfigMap>| {
            let mut n: Vec<String> = r
                .state()
                .iter()
                .map(|c| c.metadata.name.clone().unwrap())
                .collect();
            n.sort();
            n
        };
        let wait = |want: Vec<&'static str>| {
            let reader = reader.clone();
            async move {
                for _ in 0..200 {
                    if names(&reader) == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("the reflector holds {:?}, not {want:?}", names(&reader));
            }
        };
        wait(vec!["before"]).await;
        // A change the old resourceVersion has not seen, then the restart compacts it away.
        api.create(&PostParams::default(), &cm("between", json!({})))
            .await
            .unwrap();
        wait(vec!["before", "between"]).await;
        let s2 = sim.clone();
        tokio::task::spawn_blocking(move || s2.restart_api_server(Duration::from_millis(300)))
            .await
            .unwrap();
        api.create(&PostParams::default(), &cm("after", json!({})))
            .await
            .unwrap();
        api.delete("before", &DeleteParams::default())
            .await
            .unwrap();
        wait(vec!["after", "between"]).await;
        // The old resourceVersion is gone.
        let mut stale = api
            .watch(&WatchParams::default(), &old_rv)
            .await
            .unwrap()
            .boxed();
        match stale.next().await {
            Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
            other => panic!(
                "expected 410 Gone, got {other:?} (from {old_rv}): {:?}",
                sim.requests()
                    .iter()
                    .filter(|r| r.query.iter().any(|(k, _)| k == "watch"))
                    .map(|r| (r.path.clone(), r.query.clone()))
                    .collect::<Vec<_>>()
            ),
        }
        driver.abort();
    });
}

#[test]
fn crds_are_served_from_their_schema() {
    let sim = Sim::start(SimOptions::default());
    rt().block_on(async {
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1}}},
                    "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}}}}]}});
    sim.create(crd).unwrap();
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("example.com", "v1", "Widget"));
    let api: Api<kube::api::DynamicObject> = Api::default_namespaced_with(client(&sim), &ar);
    let widget = |spec: serde_json::Value| -> kube::api::DynamicObject {
        serde_json::from_value(json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w"}, "spec": spec, "status": {"ok": true}})).unwrap()
    };
    let err = api.create(&PostParams::default(), &widget(json!({"size": 0}))).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 422), "{err:?}");
    // fieldValidation=Strict (kube-rs' PostParams cannot ask for it; the store's API can).
    let strict = cairn_kube_sim::store::WriteOptions {
        validation: cairn_kube_sim::schema::FieldValidation::Strict,
        ..Default::default()
    };
    let err = sim.shared().with_state(|s| {
        let t = s.registry.get("example.com", "v1", "widgets").cloned().unwrap();
        let body = serde_json::to_value(widget(json!({"size": 1, "colour": "red"}))).unwrap();
        s.create(&t, Some("default"), body, &strict).unwrap_err()
    });
    assert_eq!(err.code, 400, "{err:?}");
    assert!(err.message.contains("unknown field \"spec.colour\""), "{err:?}");
    let made = api.create(&PostParams::default(), &widget(json!({"size": 1, "colour": "red"}))).await.unwrap();
    assert!(made.data["spec"].get("colour").is_none(), "unknown fields are pruned");
    assert!(made.data.get("status").is_none(), "status is a subresource");
    assert_eq!(sim.warnings(), vec!["Widget w: unknown field \"spec.colour\"".to_string()]);
    let patched = api
        .patch_status("w", &PatchParams::default(), &Patch::Merge(json!({"status": {"ok": true}, "spec": {"size": 9}})))
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["ok"], true);
    assert_eq!(patched.data["spec"]["size"], 1, "a status write leaves the spec");
    });
}
