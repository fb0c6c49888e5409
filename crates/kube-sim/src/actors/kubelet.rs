//! The scheduler and the kubelet stand-in: every pod bound to a live node runs its first
//! container as a local process (the image's entrypoint, or the container's command),
//! with its args and env (env, envFrom, Secret/ConfigMap refs, fieldRefs) and its
//! volumes as directories: a PVC's directory, Secret and ConfigMap keys written as files,
//! emptyDirs. A `volumeMode: Block` PVC is an image file, given through `volumeDevices`
//! (its `devicePath` maps to the image); as the real kubelet, a Block volume in
//! `volumeMounts` or a Filesystem one in `volumeDevices` keeps the pod from starting.
//! Container paths are mapped by rewriting every argument and environment
//! value that starts with a mount path (the process shares the host's filesystem; there
//! is no mount namespace). The termination message file is read back into the pod
//! status (`FallbackToLogsOnError` uses the log tail). Deleting a pod sends SIGTERM to its
//! process group, SIGKILL after the grace period, then removes the pod.

use super::{name, namespace, terminating, ty, uid};
use crate::store::{now, ApiError, State, WriteOptions};
use crate::Shared;
use base64::Engine;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Kubernetes keeps at most this much of a termination message.
const MESSAGE_MAX: usize = 4096;

struct Proc {
    uid: String,
    pid: u32,
    term_sent: Option<Instant>,
    mounts: Vec<(String, PathBuf)>,
}

/// Processes of running pods, by (namespace, name).
#[derive(Default)]
pub struct Kubelet {
    procs: Mutex<BTreeMap<(String, String), Proc>>,
    /// Pod uids whose process was started (a pod never starts twice).
    started: Mutex<Vec<String>>,
}

fn signal(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}

impl Kubelet {
    /// SIGKILLs the process of pod `ns/name`; false when none runs.
    pub fn kill(&self, ns: &str, name: &str) -> bool {
        match self
            .procs
            .lock()
            .unwrap()
            .get(&(ns.to_string(), name.to_string()))
        {
            Some(p) => {
                signal(p.pid, Signal::SIGKILL);
                true
            }
            None => false,
        }
    }

    /// SIGKILLs every pod process (the cluster is going away).
    pub fn kill_all(&self) {
        for p in self.procs.lock().unwrap().values() {
            signal(p.pid, Signal::SIGKILL);
        }
    }

    /// A command running `argv` "in" pod `ns/pod` (its paths mapped), for pods/exec.
    pub fn prepare_exec(
        &self,
        shared: &Shared,
        ns: &str,
        pod: &str,
        container: Option<&str>,
        argv: &[String],
    ) -> Result<tokio::process::Command, ApiError> {
        let object = shared.with_state(|s| {
            let t = ty(s, "core/pods");
            s.get(&t, Some(ns), pod)
        })?;
        if object["status"]["phase"] != "Running" {
            return Err(ApiError::bad_request(format!(
                "unable to upgrade connection: pod {pod} is not running (phase {})",
                object["status"]["phase"]
            )));
        }
        if let Some(c) = container {
            let known = object["spec"]["containers"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|x| x["name"] == c));
            if !known {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod}"
                )));
            }
        }
        if argv.is_empty() {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        let mounts = self
            .procs
            .lock()
            .unwrap()
            .get(&(ns.to_string(), pod.to_string()))
            .map(|p| p.mounts.clone())
            .unwrap_or_default();
        let argv: Vec<String> = argv.iter().map(|a| rewrite(a, &mounts)).collect();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(shared.pod_dir(ns, pod))
            .kill_on_drop(true);
        Ok(cmd)
    }
}

/// Maps a container path (or `--flag=path`) to the host path of the mount holding it.
fn rewrite(text: &str, mounts: &[(String, PathBuf)]) -> String {
    if let Some((flag, value)) = text.split_once('=') {
        if flag.starts_with("--") {
            return format!("{flag}={}", rewrite(value, mounts));
        }
    }
    for (container, host) in mounts {
        if text == container {
            return host.to_string_lossy().into_owned();
        }
        if let Some(rest) = text.strip_prefix(&format!("{container}/")) {
            return host.join(rest).to_string_lossy().into_owned();
        }
    }
    text.to_string()
}

/// Binds unscheduled pods to the first node (spec.nodeName).
pub fn schedule(shared: &Shared) {
    let node = shared.options.nodes.first().cloned().unwrap_or_default();
    shared.with_state(|s| {
        for pod in s.all("core/pods") {
            if pod["spec"]["nodeName"].is_string() || terminating(&pod) {
                continue;
            }
            let mut new = pod.clone();
            new["spec"]["nodeName"] = json!(node);
            super::replace(s, "core/pods", new);
            let t = ty(s, "core/pods");
            if let Ok(p) = s.get(&t, namespace(&pod).as_deref(), &name(&pod)) {
                let mut status = p["status"].clone();
                status["conditions"] = json!([{ "type": "PodScheduled", "status": "True", "lastTransitionTime": now() }]);
                super::set_status(s, "core/pods", &p, status);
            }
        }
    });
}

/// One kubelet pass: start pods, stop deleted ones, reap processes of vanished pods.
pub fn tick(shared: &Arc<Shared>) {
    let dead = shared.dead_nodes.lock().unwrap().clone();
    let pods = shared.with_state(|s| s.all("core/pods"));
    let kubelet = &shared.kubelet;
    for pod in &pods {
        let Some(node) = pod["spec"]["nodeName"].as_str() else {
            continue;
        };
        if !shared.options.nodes.iter().any(|n| n == node) || dead.iter().any(|n| n == node) {
            continue;
        }
        let key = (namespace(pod).unwrap_or_default(), name(pod));
        let running = kubelet
            .procs
            .lock()
            .unwrap()
            .get(&key)
            .is_some_and(|p| p.uid == uid(pod));
        if terminating(pod) {
            if running {
                let grace = pod["metadata"]["deletionGracePeriodSeconds"]
                    .as_u64()
                    .unwrap_or(30);
                let mut procs = kubelet.procs.lock().unwrap();
                if let Some(p) = procs.get_mut(&key) {
                    match p.term_sent {
                        None => {
                            signal(p.pid, Signal::SIGTERM);
                            p.term_sent = Some(Instant::now());
                        }
                        Some(at) if at.elapsed() >= Duration::from_secs(grace) => {
                            signal(p.pid, Signal::SIGKILL)
                        }
                        Some(_) => {}
                    }
                }
            } else {
                shared.with_state(|s| finalize(s, pod));
            }
            continue;
        }
        if pod["status"]["phase"] == "Pending"
            && !running
            && !kubelet.started.lock().unwrap().contains(&uid(pod))
        {
            start(shared, pod);
        }
    }
    // Processes whose pod was force-deleted.
    let live: Vec<String> = pods.iter().map(uid).collect();
    for p in kubelet.procs.lock().unwrap().values() {
        if !live.contains(&p.uid) {
            signal(p.pid, Signal::SIGKILL);
        }
    }
}

/// Removes a terminated (or never started) pod whose deletion was requested.
fn finalize(s: &mut State, pod: &Value) {
    let t = ty(s, "core/pods");
    let key = State::key(&t, namespace(pod).as_deref(), &name(pod));
    if let Some(current) = s.objects.get(&key).cloned() {
        if current["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())
        {
            let mut o = current;
            o["apiVersion"] = json!("v1");
            o["kind"] = json!("Pod");
            s.remove(key, o);
        }
    }
}

fn set_waiting(shared: &Shared, pod: &Value, reason: &str, message: &str) {
    shared.with_state(|s| {
        let container = pod["spec"]["containers"][0]["name"].clone();
        let mut status = pod["status"].clone();
        status["containerStatuses"] = json!([{ "name": container, "ready": false, "restartCount": 0,
            "image": pod["spec"]["containers"][0]["image"], "imageID": "",
            "state": { "waiting": { "reason": reason, "message": message } } }]);
        if status != pod["status"] {
            super::set_status(s, "core/pods", pod, status);
        }
    });
}

fn decode(data: &Value, binary: bool) -> BTreeMap<String, Vec<u8>> {
    data.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let text = v.as_str().unwrap_or_default();
            let bytes = if binary {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .unwrap_or_default()
            } else {
                text.as_bytes().to_vec()
            };
            (k.clone(), bytes)
        })
        .collect()
}

/// Secret or ConfigMap keys and values.
fn keys_of(s: &State, kind: &str, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let id = if kind == "Secret" {
        "core/secrets"
    } else {
        "core/configmaps"
    };
    let t = ty(s, id);
    let o = s.get(&t, Some(ns), name).ok()?;
    let mut out = if kind == "Secret" {
        decode(&o["data"], true)
    } else {
        decode(&o["data"], false)
    };
    if kind != "Secret" {
        out.extend(decode(&o["binaryData"], true));
    }
    Some(out)
}

/// Resolves volumes, env and command; returns why the pod cannot start yet.
fn start(shared: &Arc<Shared>, pod: &Value) {
    let ns = namespace(pod).unwrap_or_default();
    let pod_name = name(pod);
    let dir = shared.pod_dir(&ns, &pod_name);
    let prepared = shared.with_state(|s| prepare(shared, s, pod, &dir));
    let (program, args, env, mounts) = match prepared {
        Ok(p) => p,
        Err((reason, message)) => return set_waiting(shared, pod, reason, &message),
    };
    let log = match std::fs::File::create(dir.join("log")) {
        Ok(f) => f,
        Err(e) => return set_waiting(shared, pod, "CreateContainerError", &e.to_string()),
    };
    let log2 = log.try_clone().unwrap();
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .env_clear()
        .envs(env)
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            shared.kubelet.started.lock().unwrap().push(uid(pod));
            return finish(
                shared,
                pod,
                128,
                &format!("failed to start {}: {e}", program.display()),
                "StartError",
            );
        }
    };
    let pid = child.id().unwrap_or(0);
    shared.kubelet.started.lock().unwrap().push(uid(pod));
    shared.kubelet.procs.lock().unwrap().insert(
        (ns.clone(), pod_name.clone()),
        Proc {
            uid: uid(pod),
            pid,
            term_sent: None,
            mounts,
        },
    );
    let started_at = now();
    shared.with_state(|s| {
        let t = ty(s, "core/pods");
        if let Ok(p) = s.get(&t, Some(&ns), &pod_name) {
            let c = &p["spec"]["containers"][0];
            let mut status = p["status"].clone();
            status["phase"] = json!("Running");
            status["startTime"] = json!(started_at);
            status["podIP"] = json!("10.0.0.2");
            status["hostIP"] = json!("127.0.0.1");
            status["conditions"] = json!([
                { "type": "PodScheduled", "status": "True", "lastTransitionTime": started_at },
                { "type": "Initialized", "status": "True", "lastTransitionTime": started_at },
                { "type": "ContainersReady", "status": "True", "lastTransitionTime": started_at },
                { "type": "Ready", "status": "True", "lastTransitionTime": started_at },
            ]);
            status["containerStatuses"] = json!([{ "name": c["name"], "ready": true, "started": true,
                "restartCount": 0, "image": c["image"], "imageID": format!("sim://{}", c["image"].as_str().unwrap_or_default()),
                "containerID": format!("sim://{pid}"), "state": { "running": { "startedAt": started_at } } }]);
            super::set_status(s, "core/pods", &p, status);
        }
    });
    let shared2 = shared.clone();
    let pod2 = pod.clone();
    tokio::spawn(async move {
        let status = child.wait().await;
        let code = match status {
            Ok(s) => s
                .code()
                .or_else(|| s.signal().map(|sig| 128 + sig))
                .unwrap_or(1),
            Err(_) => 1,
        };
        shared2
            .kubelet
            .procs
            .lock()
            .unwrap()
            .remove(&(namespace(&pod2).unwrap_or_default(), name(&pod2)));
        let reason = if code == 0 { "Completed" } else { "Error" };
        finish(&shared2, &pod2, code, "", reason);
    });
}

/// Records the container's end in the pod status (or removes a deleted pod).
fn finish(shared: &Shared, pod: &Value, code: i32, start_error: &str, reason: &str) {
    let ns = namespace(pod).unwrap_or_default();
    let dir = shared.pod_dir(&ns, &name(pod));
    let container = &pod["spec"]["containers"][0];
    let mut message = std::fs::read_to_string(dir.join("termination-log")).unwrap_or_default();
    if message.is_empty() && !start_error.is_empty() {
        message = start_error.to_string();
    }
    if message.trim().is_empty()
        && code != 0
        && container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    {
        let log = std::fs::read(dir.join("log")).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = text.lines().collect();
        let mut tail = lines[lines.len().saturating_sub(80)..].join("\n");
        if tail.len() > 2048 {
            let mut cut = tail.len() - 2048;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail = tail[cut..].to_string();
        }
        message = tail;
    }
    if message.len() > MESSAGE_MAX {
        let mut cut = MESSAGE_MAX;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    shared.with_state(|s| {
        let t = ty(s, "core/pods");
        let Ok(current) = s.get(&t, Some(&ns), &name(pod)) else { return };
        if current["metadata"]["uid"] != pod["metadata"]["uid"] {
            return;
        }
        if terminating(&current) {
            return finalize(s, &current);
        }
        let finished = now();
        let mut status = current["status"].clone();
        status["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
        let started = status["startTime"].clone();
        let mut terminated = json!({ "exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished,
            "containerID": status["containerStatuses"][0]["containerID"] });
        if !message.is_empty() {
            terminated["message"] = json!(message);
        }
        status["containerStatuses"] = json!([{ "name": container["name"], "ready": false, "started": false,
            "restartCount": 0, "image": container["image"], "imageID": status["containerStatuses"][0]["imageID"],
            "state": { "terminated": terminated } }]);
        for c in status["conditions"].as_array_mut().into_iter().flatten() {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!("False");
                c["reason"] = json!("PodCompleted");
            }
        }
        let _ = s.update(&t, Some(&ns), &name(pod), Some("status"), {
            let mut o = current.clone();
            o["status"] = status;
            o
        }, &WriteOptions::default());
    });
}

type Prepared = (
    PathBuf,
    Vec<String>,
    Vec<(String, String)>,
    Vec<(String, PathBuf)>,
);

fn prepare(
    shared: &Shared,
    s: &State,
    pod: &Value,
    dir: &std::path::Path,
) -> Result<Prepared, (&'static str, String)> {
    let ns = namespace(pod).unwrap_or_default();
    let container = &pod["spec"]["containers"][0];
    let image_name = container["image"].as_str().unwrap_or_default();
    let Some(image) = shared.options.images.get(image_name) else {
        return Err((
            "ErrImagePull",
            format!("image {image_name:?} is not known to the simulated kubelet"),
        ));
    };
    let io = |e: std::io::Error| ("CreateContainerError", e.to_string());
    std::fs::create_dir_all(dir.join("volumes")).map_err(io)?;
    let mut volumes: BTreeMap<String, PathBuf> = BTreeMap::new();
    // Volumes of Block PVCs: devices, never mounted.
    let mut block: Vec<String> = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let vname = v["name"].as_str().unwrap_or_default().to_string();
        let vdir = dir.join("volumes").join(&vname);
        if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            let t = ty(s, "core/persistentvolumeclaims");
            let pvc = s.get(&t, Some(&ns), claim).map_err(|_| {
                (
                    "ContainerCreating",
                    format!("persistentvolumeclaim \"{claim}\" not found"),
                )
            })?;
            let Some(pv) = pvc["spec"]["volumeName"]
                .as_str()
                .filter(|_| pvc["status"]["phase"] == "Bound")
            else {
                return Err((
                    "ContainerCreating",
                    format!("persistentvolumeclaim \"{claim}\" is not bound"),
                ));
            };
            if terminating(&pvc) {
                return Err((
                    "ContainerCreating",
                    format!("persistentvolumeclaim \"{claim}\" is being deleted"),
                ));
            }
            if super::storage::is_block(&pvc) {
                block.push(vname.clone());
            }
            volumes.insert(vname, super::storage::volume_path(shared, pv));
        } else if v["secret"].is_object() || v["configMap"].is_object() {
            let (kind, src) = if v["secret"].is_object() {
                ("Secret", &v["secret"])
            } else {
                ("ConfigMap", &v["configMap"])
            };
            let obj_name = src["secretName"]
                .as_str()
                .or(src["name"].as_str())
                .unwrap_or_default();
            let optional = src["optional"] == true;
            let data = match keys_of(s, kind, &ns, obj_name) {
                Some(d) => d,
                None if optional => BTreeMap::new(),
                None => {
                    return Err((
                        "ContainerCreating",
                        format!("MountVolume.SetUp failed for volume \"{vname}\" : {} \"{obj_name}\" not found", kind.to_lowercase()),
                    ))
                }
            };
            std::fs::create_dir_all(&vdir).map_err(io)?;
            let items: Vec<(String, String)> = match src["items"].as_array() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        (
                            i["key"].as_str().unwrap_or_default().to_string(),
                            i["path"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                let Some(bytes) = data.get(&key) else {
                    return Err((
                        "ContainerCreating",
                        format!("{kind} {obj_name} has no key {key:?}"),
                    ));
                };
                let target = vdir.join(&path);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(io)?;
                }
                std::fs::write(target, bytes).map_err(io)?;
            }
            volumes.insert(vname, vdir);
        } else if let Some(path) = v["hostPath"]["path"].as_str() {
            volumes.insert(vname, PathBuf::from(path));
        } else {
            // emptyDir, and anything else, as an empty directory.
            std::fs::create_dir_all(&vdir).map_err(io)?;
            volumes.insert(vname, vdir);
        }
    }
    let mode_mismatch = |vname: &str, mode: &str, field: &str| {
        (
            "ContainerCreating",
            format!("volume {vname} has volumeMode {mode}, but is specified in {field}"),
        )
    };
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for d in container["volumeDevices"].as_array().into_iter().flatten() {
        let vname = d["name"].as_str().unwrap_or_default();
        let Some(host) = volumes.get(vname) else {
            return Err((
                "CreateContainerConfigError",
                format!("volume {vname:?} is not defined in the pod"),
            ));
        };
        if !block.iter().any(|b| b == vname) {
            return Err(mode_mismatch(vname, "Filesystem", "volumeDevices"));
        }
        let path = d["devicePath"].as_str().unwrap_or_default();
        mounts.push((path.to_string(), host.clone()));
    }
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap_or_default();
        let Some(host) = volumes.get(vname) else {
            return Err((
                "CreateContainerConfigError",
                format!("volume {vname:?} is not defined in the pod"),
            ));
        };
        if block.iter().any(|b| b == vname) {
            return Err(mode_mismatch(vname, "Block", "volumeMounts"));
        }
        let host = match m["subPath"].as_str().filter(|p| !p.is_empty()) {
            Some(sub) => host.join(sub),
            None => host.clone(),
        };
        mounts.push((
            m["mountPath"]
                .as_str()
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_string(),
            host,
        ));
    }
    let termination = dir.join("termination-log");
    let _ = std::fs::remove_file(&termination);
    if let Some(path) = container["terminationMessagePath"].as_str() {
        mounts.push((path.to_string(), termination.clone()));
    }
    for (container_path, host) in &shared.options.image_files {
        mounts.push((container_path.clone(), host.clone()));
    }
    mounts.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".into(), dir.to_string_lossy().into_owned()),
        ("HOSTNAME".into(), name(pod)),
        // In a real pod the service account token gives API access; here the kubeconfig.
        (
            "KUBECONFIG".into(),
            shared.kubeconfig.to_string_lossy().into_owned(),
        ),
    ];
    env.extend(image.env.iter().cloned());
    if let Some(var) = &image.termination_log_env {
        env.push((var.clone(), termination.to_string_lossy().into_owned()));
    }
    for from in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = from["prefix"].as_str().unwrap_or_default();
        let (kind, src) = if from["secretRef"].is_object() {
            ("Secret", &from["secretRef"])
        } else {
            ("ConfigMap", &from["configMapRef"])
        };
        let obj_name = src["name"].as_str().unwrap_or_default();
        match keys_of(s, kind, &ns, obj_name) {
            Some(data) => {
                for (k, v) in data {
                    env.push((
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
            }
            None if src["optional"] == true => {}
            None => {
                return Err((
                    "CreateContainerConfigError",
                    format!("{} \"{obj_name}\" not found", kind.to_lowercase()),
                ));
            }
        }
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let key = e["name"].as_str().unwrap_or_default().to_string();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if let Some(r) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match r {
                "metadata.name" => name(pod),
                "metadata.namespace" => ns.clone(),
                "metadata.uid" => uid(pod),
                "spec.nodeName" => pod["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                "spec.serviceAccountName" => pod["spec"]["serviceAccountName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            }
        } else if e["valueFrom"]["secretKeyRef"].is_object()
            || e["valueFrom"]["configMapKeyRef"].is_object()
        {
            let (kind, r) = if e["valueFrom"]["secretKeyRef"].is_object() {
                ("Secret", &e["valueFrom"]["secretKeyRef"])
            } else {
                ("ConfigMap", &e["valueFrom"]["configMapKeyRef"])
            };
            let obj_name = r["name"].as_str().unwrap_or_default();
            let k = r["key"].as_str().unwrap_or_default();
            match keys_of(s, kind, &ns, obj_name).and_then(|d| d.get(k).cloned()) {
                Some(v) => String::from_utf8_lossy(&v).into_owned(),
                None if r["optional"] == true => continue,
                None => {
                    return Err((
                        "CreateContainerConfigError",
                        format!("couldn't find key {k} in {kind} {ns}/{obj_name}"),
                    ));
                }
            }
        } else {
            String::new()
        };
        env.push((key, value));
    }
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| (k, rewrite(&v, &mounts)))
        .collect();
    let command: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let mut args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(|a| rewrite(a, &mounts)))
        .collect();
    let program = match command.split_first() {
        Some((first, rest)) => {
            let mut all: Vec<String> = rest.iter().map(|a| rewrite(a, &mounts)).collect();
            all.append(&mut args);
            args = all;
            PathBuf::from(first)
        }
        None => image.entrypoint.clone(),
    };
    rewrite_shell_script(&program, &mut args, &mounts);
    Ok((program, args, env, mounts))
}

/// For a shell run as `sh [-x] -c SCRIPT` (how KDMP starts its executor), rewrites the
/// container paths in the script word by word (words separated by single spaces, as
/// KDMP joins them).
fn rewrite_shell_script(
    program: &std::path::Path,
    args: &mut [String],
    mounts: &[(String, PathBuf)],
) {
    let shell = program
        .file_name()
        .is_some_and(|n| n == "sh" || n == "bash");
    if !shell {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "-c") {
        if let Some(script) = args.get_mut(i + 1) {
            *script = script
                .split(' ')
                .map(|word| rewrite(word, mounts))
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_rewritten_to_their_mounts() {
        let mounts = vec![
            ("/etc/cairn/password".to_string(), PathBuf::from("/h/pw")),
            ("/data".to_string(), PathBuf::from("/h/vol")),
        ];
        assert_eq!(rewrite("/data", &mounts), "/h/vol");
        assert_eq!(rewrite("/data/x/y", &mounts), "/h/vol/x/y");
        assert_eq!(rewrite("/database", &mounts), "/database");
        assert_eq!(
            rewrite("--password-file=/etc/cairn/password/k", &mounts),
            "--password-file=/h/pw/k"
        );
        assert_eq!(rewrite("backup", &mounts), "backup");
    }

    #[test]
    fn a_shell_script_has_its_container_paths_rewritten_word_by_word() {
        let mounts = vec![
            (
                "/kopiaexecutor".to_string(),
                PathBuf::from("/h/bin/kopiaexecutor"),
            ),
            ("/data".to_string(), PathBuf::from("/h/vol")),
        ];
        let mut args: Vec<String> = [
            "-x",
            "-c",
            "/kopiaexecutor backup --source-path /data --x /database",
        ]
        .map(String::from)
        .to_vec();
        rewrite_shell_script(std::path::Path::new("/bin/sh"), &mut args, &mounts);
        assert_eq!(
            args[2],
            "/h/bin/kopiaexecutor backup --source-path /h/vol --x /database"
        );
        let mut other = args.clone();
        other[2] = "/data".into();
        rewrite_shell_script(std::path::Path::new("/bin/cairn"), &mut other, &mounts);
        assert_eq!(other[2], "/data", "only a shell's script is rewritten");
    }
}
