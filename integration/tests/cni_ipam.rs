//! berth's host-local and loopback CNI plugins, black-box: the berth binary
//! linked under the plugin names by `berth cni install`, run with the CNI_*
//! environment exactly as a runtime runs it. Concurrency and `kill -9`
//! through many processes, IPv6 and dual stack, the spec's errors for bad
//! input, loopback in a network namespace, and interop with Debian's
//! reference host-local on one store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_integration::cni::{BinDir, Call, Reply, StoreFiles, addresses, reference, store_files};
use berth_integration::netns::NetNs;
use berth_integration::workdir::tempdir;
use serde_json::{Value, json};

const NET: &str = "ipamnet";

fn conf(data: &Path, version: &str, mut ipam: Value) -> Value {
    ipam["type"] = json!("host-local");
    ipam["dataDir"] = json!(data);
    json!({"cniVersion": version, "name": NET, "type": "bridge", "ipam": ipam})
}

/// The one address of an ADD result, without its prefix length.
fn ip_of(result: &Value) -> Result<String> {
    let a = addresses(result);
    ensure!(a.len() == 1, "expected one address: {result}");
    Ok(a[0].split('/').next().unwrap_or_default().to_string())
}

/// Allocated address -> owner line, from the store.
fn allocations(data: &Path) -> Result<BTreeMap<String, String>> {
    Ok(store_files(data, NET)?.ips.into_iter().collect())
}

/// A small deterministic generator (the seed is printed to reproduce a run).
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Starts one plugin process per call, all blocked reading stdin, then
/// feeds them at once so they really run concurrently.
fn run_together(jobs: &[(&Path, Call)], config: &Value) -> Result<Vec<Child>> {
    let mut children = Vec::with_capacity(jobs.len());
    for (exe, c) in jobs {
        children.push(
            c.command(exe)
                .spawn()
                .with_context(|| format!("running {}", exe.display()))?,
        );
    }
    let stdin = serde_json::to_vec(config)?;
    for ch in &mut children {
        if let Some(mut s) = ch.stdin.take() {
            s.write_all(&stdin)?;
        }
    }
    Ok(children)
}

#[test]
fn add_check_del_gc_status_version() -> Result<()> {
    let bin = BinDir::berth()?;
    let hl = bin.plugin("host-local");
    let data = tempdir("ipam-")?;
    let c = conf(
        data.path(),
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.61.0.0/29"}]],
        "routes": [{"dst": "0.0.0.0/0"}]}),
    );

    // Run by hand without CNI_COMMAND: it says what it is.
    let about = Reply::of(
        std::process::Command::new(&hl)
            .env_clear()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?,
    )?;
    ensure!(
        about.status.success() && about.stderr.contains("berth CNI plugin host-local"),
        "{about:?}"
    );
    let v = Call::new("VERSION", "")
        .run(&hl, &json!({"cniVersion": "1.1.0"}))?
        .result()?;
    ensure!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("1.1.0"))),
        "{v}"
    );

    let a = Call::new("ADD", "ca").run(&hl, &c)?.result()?;
    ensure!(a["cniVersion"] == "1.1.0", "{a}");
    ensure!(addresses(&a) == ["10.61.0.2/29"], "{a}");
    ensure!(a["ips"][0]["gateway"] == "10.61.0.1", "{a}");
    ensure!(a["routes"][0]["dst"] == "0.0.0.0/0", "{a}");
    let b = Call::new("ADD", "cb").run(&hl, &c)?.result()?;
    ensure!(addresses(&b) == ["10.61.0.3/29"], "{b}");
    let store = allocations(data.path())?;
    ensure!(
        store.get("10.61.0.2").map(String::as_str) == Some("ca\r\neth0"),
        "{store:?}"
    );

    Call::new("CHECK", "ca").run(&hl, &c)?.done()?;
    Call::new("DEL", "ca").run(&hl, &c)?.done()?;
    // DEL is idempotent, also without a netns.
    Call::new("DEL", "ca").netns(None).run(&hl, &c)?.done()?;
    let (code, msg) = Call::new("CHECK", "ca").run(&hl, &c)?.error()?;
    ensure!(code == 102 && msg.contains("ca"), "{code} {msg}");

    for id in ["cc", "cd", "ce"] {
        Call::new("ADD", id).run(&hl, &c)?.result()?;
    }
    Call::new("STATUS", "").netns(None).run(&hl, &c)?.done()?;
    Call::new("ADD", "cf").run(&hl, &c)?.result()?;
    // .2-.6 all taken now.
    let (code, msg) = Call::new("STATUS", "").netns(None).run(&hl, &c)?.error()?;
    ensure!(
        code == 50 && msg.contains("10.61.0.1-10.61.0.6"),
        "{code} {msg}"
    );

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([
        {"containerID": "cb", "ifname": "eth0"},
        {"containerID": "cd", "ifname": "eth0"},
        {"containerID": "cc", "ifname": "eth1"}
    ]);
    Call::new("GC", "").netns(None).run(&hl, &gc)?.done()?;
    let owners: BTreeSet<String> = allocations(data.path())?.into_values().collect();
    ensure!(
        owners == BTreeSet::from(["cb\r\neth0".to_string(), "cd\r\neth0".to_string()]),
        "{owners:?}"
    );
    Call::new("STATUS", "").netns(None).run(&hl, &c)?.done()?;
    Ok(())
}

#[test]
fn two_hundred_concurrent_adds_get_distinct_addresses() -> Result<()> {
    let bin = BinDir::berth()?;
    let hl = bin.plugin("host-local");
    let data = tempdir("ipam-")?;
    let c = conf(data.path(), "1.0.0", json!({"subnet": "10.62.0.0/24"}));
    let calls: Vec<(&Path, Call)> = (0..200)
        .map(|i| (hl.as_path(), Call::new("ADD", &format!("p{i}"))))
        .collect();
    let t = Instant::now();
    let children = run_together(&calls, &c)?;
    let mut seen = BTreeMap::new();
    for (i, ch) in children.into_iter().enumerate() {
        let ip = ip_of(&Reply::of(ch)?.result()?)?;
        if let Some(other) = seen.insert(ip.clone(), i) {
            bail!("{ip} handed to p{other} and p{i}");
        }
    }
    eprintln!("200 concurrent ADDs in {:?}", t.elapsed());
    let store = allocations(data.path())?;
    ensure!(store.len() == 200, "{} allocations stored", store.len());
    for (ip, i) in &seen {
        ensure!(
            store.get(ip) == Some(&format!("p{i}\r\neth0")),
            "{ip}: {:?}",
            store.get(ip)
        );
    }

    let dels: Vec<(&Path, Call)> = (0..200)
        .map(|i| (hl.as_path(), Call::new("DEL", &format!("p{i}"))))
        .collect();
    for ch in run_together(&dels, &c)? {
        Reply::of(ch)?.done()?;
    }
    ensure!(
        allocations(data.path())?.is_empty(),
        "addresses left after DEL"
    );
    Ok(())
}

#[test]
fn del_then_add_reuses_freed_addresses_once_the_range_wraps() -> Result<()> {
    let bin = BinDir::berth()?;
    let hl = bin.plugin("host-local");
    let data = tempdir("ipam-")?;
    // .2-.6 are handed out (.0 network, .1 gateway, .7 broadcast).
    let c = conf(data.path(), "1.0.0", json!({"subnet": "10.63.0.0/29"}));
    let add = |id: &str| -> Result<String> { ip_of(&Call::new("ADD", id).run(&hl, &c)?.result()?) };
    ensure!(add("a")? == "10.63.0.2");
    Call::new("DEL", "a").run(&hl, &c)?.done()?;
    // Round robin: a freed address comes back only after the others.
    let got: Vec<String> = ["b", "c", "d", "e", "f"]
        .iter()
        .map(|id| add(id))
        .collect::<Result<_>>()?;
    ensure!(
        got == [
            "10.63.0.3",
            "10.63.0.4",
            "10.63.0.5",
            "10.63.0.6",
            "10.63.0.2"
        ],
        "{got:?}"
    );
    let (code, msg) = Call::new("ADD", "g").run(&hl, &c)?.error()?;
    ensure!(
        code == 100 && msg.contains("10.63.0.1-10.63.0.6"),
        "{code} {msg}"
    );
    for id in ["d", "b"] {
        Call::new("DEL", id).run(&hl, &c)?.done()?;
    }
    let again: BTreeSet<String> = ["h", "i"].iter().map(|id| add(id)).collect::<Result<_>>()?;
    ensure!(
        again == BTreeSet::from(["10.63.0.3".to_string(), "10.63.0.5".to_string()]),
        "{again:?}"
    );
    Ok(())
}

#[test]
fn kill_9_during_adds_leaks_nothing_after_gc() -> Result<()> {
    let bin = BinDir::berth()?;
    let hl = bin.plugin("host-local");
    let data = tempdir("ipam-")?;
    let c = conf(data.path(), "1.1.0", json!({"subnet": "10.64.0.0/23"}));
    // How long one ADD takes here, to aim the kills at its whole run.
    let t = Instant::now();
    Call::new("ADD", "probe").run(&hl, &c)?.result()?;
    let span = t.elapsed().as_micros() as u64 * 3 / 2;
    Call::new("DEL", "probe").run(&hl, &c)?.done()?;

    let mut rng = Rng::new();
    let mut survivors: BTreeMap<String, String> = BTreeMap::new();
    let mut killed = 0;
    for round in 0..4 {
        let calls: Vec<Call> = (0..40)
            .map(|i| Call::new("ADD", &format!("k{round}-{i}")))
            .collect();
        let stdin = serde_json::to_vec(&c)?;
        let mut running = Vec::new();
        for call in &calls {
            let deadline = Instant::now() + Duration::from_micros(rng.below(span));
            running.push((
                call.container_id.clone(),
                deadline,
                call.spawn(&hl, &stdin)?,
            ));
        }
        running.sort_by_key(|r| r.1);
        for (_, deadline, ch) in &mut running {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            // Fails only once the child was reaped, which nothing did yet.
            let _ = ch.kill();
        }
        for (id, _, ch) in running {
            let reply = Reply::of(ch)?;
            if reply.status.success() {
                survivors.insert(id, ip_of(&reply.result()?)?);
            } else if reply.status.code().is_none() {
                killed += 1;
            } else {
                bail!("ADD {id} failed on its own: {reply:?}");
            }
        }
    }
    let before = allocations(data.path())?;
    let orphans = before
        .values()
        .filter(|owner| {
            !survivors
                .keys()
                .any(|id| **owner == format!("{id}\r\neth0"))
        })
        .count();
    eprintln!(
        "{} ADDs finished, {killed} killed, {orphans} addresses held by killed ADDs before GC",
        survivors.len()
    );
    ensure!(
        killed > 0 && !survivors.is_empty(),
        "the kills missed the ADDs entirely"
    );
    let distinct: BTreeSet<&String> = survivors.values().collect();
    ensure!(
        distinct.len() == survivors.len(),
        "an address was handed out twice"
    );

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = Value::Array(
        survivors
            .keys()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect(),
    );
    Call::new("GC", "").netns(None).run(&hl, &gc)?.done()?;
    let StoreFiles { ips, other } = store_files(data.path(), NET)?;
    let expected: BTreeMap<String, String> = survivors
        .iter()
        .map(|(id, ip)| (ip.clone(), format!("{id}\r\neth0")))
        .collect();
    ensure!(
        ips.into_iter().collect::<BTreeMap<_, _>>() == expected,
        "the store after GC is not exactly the finished ADDs"
    );
    ensure!(
        other
            .iter()
            .all(|n| n == "lock" || n == "last_reserved_ip.0"),
        "leftover files: {other:?}"
    );
    // And allocation goes on without handing out a survivor's address.
    for i in 0..10 {
        let ip = ip_of(
            &Call::new("ADD", &format!("after{i}"))
                .run(&hl, &c)?
                .result()?,
        )?;
        ensure!(!distinct.contains(&ip), "{ip} handed out again");
    }
    Ok(())
}

#[test]
fn ipv6_and_dual_stack() -> Result<()> {
    let bin = BinDir::berth()?;
    let hl = bin.plugin("host-local");
    let data = tempdir("ipam-")?;
    let v6 = conf(
        data.path(),
        "1.0.0",
        json!({"ranges": [[{"subnet": "fd00:65::/120"}]],
        "routes": [{"dst": "::/0"}]}),
    );
    let r = Call::new("ADD", "six").run(&hl, &v6)?.result()?;
    ensure!(addresses(&r) == ["fd00:65::2/120"], "{r}");
    ensure!(
        r["ips"][0]["gateway"] == "fd00:65::1" && r["routes"][0]["dst"] == "::/0",
        "{r}"
    );
    Call::new("CHECK", "six").run(&hl, &v6)?.done()?;
    // 0.4.0 results carry each address's version.
    let old = conf(
        data.path(),
        "0.4.0",
        json!({"ranges": [[{"subnet": "fd00:65::/120"}]]}),
    );
    let r = Call::new("ADD", "old").run(&hl, &old)?.result()?;
    ensure!(
        r["ips"][0]["version"] == "6" && r["cniVersion"] == "0.4.0",
        "{r}"
    );

    let dual = conf(
        data.path(),
        "1.1.0",
        json!({"ranges": [[{"subnet": "10.65.0.0/24"}], [{"subnet": "fd00:66::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}),
    );
    let mut got = BTreeSet::new();
    for id in ["d1", "d2", "d3"] {
        let r = Call::new("ADD", id).run(&hl, &dual)?.result()?;
        let a = addresses(&r);
        ensure!(a.len() == 2, "{r}");
        ensure!(
            a[0].starts_with("10.65.0.") && a[1].starts_with("fd00:66::"),
            "{r}"
        );
        ensure!(r["ips"][1]["gateway"] == "fd00:66::1", "{r}");
        got.extend(a);
    }
    ensure!(got.len() == 6, "{got:?}");
    Call::new("CHECK", "d2").run(&hl, &dual)?.done()?;
    Call::new("DEL", "d2").run(&hl, &dual)?.done()?;
    let left: Vec<String> = allocations(data.path())?
        .into_iter()
        .filter(|(_, o)| o.starts_with("d"))
        .map(|(ip, _)| ip)
        .collect();
    ensure!(
        left.len() == 4
            && !left
                .iter()
                .any(|ip| ip.ends_with(":3") || ip == "10.65.0.3"),
        "{left:?}"
    );
    // A requested address in each family.
    let r = Call::new("ADD", "d4")
        .args("IgnoreUnknown=1;IP=10.65.0.77,fd00:66::77")
        .run(&hl, &dual)?
        .result()?;
    ensure!(addresses(&r) == ["10.65.0.77/24", "fd00:66::77/64"], "{r}");
    Ok(())
}

#[test]
fn bad_input_gives_the_spec_error_and_allocates_nothing() -> Result<()> {
    let bin = BinDir::berth()?;
    let hl = bin.plugin("host-local");
    let data = tempdir("ipam-")?;
    let d = data.path();
    let ok = conf(d, "1.0.0", json!({"subnet": "10.66.0.0/30"}));
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = ok.clone();
        f(&mut v);
        serde_json::to_vec(&v).unwrap_or_default()
    };
    let add = Call::new("ADD", "bad");
    let cases: Vec<(&str, Call, Vec<u8>, u64, &str)> = vec![
        (
            "malformed JSON",
            add.clone(),
            br#"{"cniVersion": "1.0.0", "name": "#.to_vec(),
            6,
            "JSON",
        ),
        (
            "unknown cniVersion",
            add.clone(),
            with(&|v| v["cniVersion"] = json!("7.7.7")),
            1,
            "7.7.7",
        ),
        (
            "no type",
            add.clone(),
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("type"));
            }),
            7,
            "",
        ),
        (
            "no name",
            add.clone(),
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("name"));
            }),
            7,
            "name",
        ),
        (
            "no ipam",
            add.clone(),
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("ipam"));
            }),
            7,
            "ipam",
        ),
        (
            "no ranges",
            add.clone(),
            with(&|v| {
                v["ipam"].as_object_mut().map(|o| o.remove("subnet"));
            }),
            7,
            "ranges",
        ),
        (
            "range without subnet",
            add.clone(),
            with(&|v| {
                v["ipam"]["ranges"] = json!([[{"gateway": "10.66.1.1"}]]);
                v["ipam"].as_object_mut().map(|o| o.remove("subnet"));
            }),
            7,
            "ipam.ranges[0][0].subnet",
        ),
        (
            "invalid CIDR",
            add.clone(),
            with(&|v| v["ipam"]["subnet"] = json!("10.66.0.0/40")),
            7,
            "ipam.subnet",
        ),
        (
            "not a CIDR",
            add.clone(),
            with(&|v| v["ipam"]["subnet"] = json!("ten.0.0.0/8")),
            7,
            "ipam.subnet",
        ),
        (
            "range outside the subnet",
            add.clone(),
            with(&|v| v["ipam"]["rangeEnd"] = json!("10.66.9.9")),
            7,
            "ipam.rangeEnd",
        ),
        (
            "gateway outside the subnet",
            add.clone(),
            with(&|v| v["ipam"]["gateway"] = json!("10.67.0.1")),
            7,
            "ipam.gateway",
        ),
        (
            "bad exclude",
            add.clone(),
            with(&|v| v["ipam"]["exclude"] = json!(["10.66.0.300"])),
            7,
            "ipam.exclude[0]",
        ),
        (
            "requested IP outside",
            add.clone().args("IP=10.99.0.5"),
            serde_json::to_vec(&ok)?,
            7,
            "10.99.0.5",
        ),
        (
            "no CNI_CONTAINERID",
            Call::new("ADD", ""),
            serde_json::to_vec(&ok)?,
            4,
            "CNI_CONTAINERID",
        ),
        (
            "unknown command",
            Call::new("JUMP", "bad"),
            serde_json::to_vec(&ok)?,
            4,
            "JUMP",
        ),
        (
            "DEL of malformed JSON",
            Call::new("DEL", "bad"),
            b"[".to_vec(),
            6,
            "JSON",
        ),
    ];
    for (what, call, stdin, want, needle) in cases {
        let (code, msg) = call
            .run_raw(&hl, &stdin)?
            .error()
            .with_context(|| what.to_string())?;
        ensure!(code == want, "{what}: code {code} (wanted {want}): {msg}");
        ensure!(
            msg.contains(needle),
            "{what}: {msg:?} does not name {needle:?}"
        );
        ensure!(
            allocations(d)?.is_empty(),
            "{what}: an address was allocated"
        );
    }
    // Exhausted: the /30 has one address.
    Call::new("ADD", "first").run(&hl, &ok)?.result()?;
    let (code, msg) = add.run(&hl, &ok)?.error()?;
    ensure!(
        code == 100 && msg.contains("10.66.0.1-10.66.0.2"),
        "{code} {msg}"
    );
    let store = allocations(d)?;
    ensure!(
        store.len() == 1 && store.values().all(|o| o == "first\r\neth0"),
        "{store:?}"
    );
    Ok(())
}

#[test]
fn loopback_in_a_netns() -> Result<()> {
    let bin = BinDir::berth()?;
    let lo = bin.plugin("loopback");
    let ns = NetNs::new("cnilo")?;
    ns.sh("ip link set lo down")?;
    let c = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let call = |cmd: &str| Call::new(cmd, "lo1").ifname("lo").netns(Some(&ns.path()));
    let is_up = || -> Result<bool> {
        let out = ns.sh("ip -o link show lo")?;
        Ok(out.contains(",UP") || out.contains("<UP"))
    };

    let r = call("ADD").run(&lo, &c)?.result()?;
    ensure!(is_up()?, "lo is not up after ADD");
    ensure!(r["interfaces"][0]["name"] == "lo", "{r}");
    ensure!(r["interfaces"][0]["sandbox"] == json!(ns.path()), "{r}");
    ensure!(
        addresses(&r).first().map(String::as_str) == Some("127.0.0.1/8"),
        "{r}"
    );
    ensure!(r["ips"][0]["interface"] == 0, "{r}");
    let addrs = ns.sh("ip -o addr show dev lo")?;
    ensure!(addrs.contains("127.0.0.1/8"), "{addrs}");
    call("CHECK").run(&lo, &c)?.done()?;

    call("DEL").run(&lo, &c)?.done()?;
    ensure!(!is_up()?, "lo is still up after DEL");
    let (code, msg) = call("CHECK").run(&lo, &c)?.error()?;
    ensure!(code == 102 && msg.contains("down"), "{code} {msg}");

    let path = ns.path();
    drop(ns);
    // The namespace is gone: DEL still succeeds, ADD says which variable is wrong.
    let gone = |cmd: &str| Call::new(cmd, "lo1").ifname("lo").netns(Some(&path));
    gone("DEL").run(&lo, &c)?.done()?;
    let (code, msg) = gone("ADD").run(&lo, &c)?.error()?;
    ensure!(code == 4 && msg.contains("CNI_NETNS"), "{code} {msg}");
    Ok(())
}

#[test]
fn interop_with_the_reference_host_local_on_one_store() -> Result<()> {
    let bin = BinDir::berth()?;
    let ours = bin.plugin("host-local");
    let theirs = reference("host-local")?;
    let data = tempdir("ipam-")?;
    // The reference speaks CNI up to 1.0.0.
    let c = conf(data.path(), "1.0.0", json!({"subnet": "10.67.0.0/24"}));

    let mut owner_of = BTreeMap::new();
    for i in 0..8 {
        for (who, exe) in [("o", &ours), ("r", &theirs)] {
            let id = format!("{who}{i}");
            let ip = ip_of(&Call::new("ADD", &id).run(exe, &c)?.result()?)?;
            if let Some(prev) = owner_of.insert(ip.clone(), id.clone()) {
                bail!("{ip} handed to {prev} and to {id}");
            }
        }
    }
    let store = allocations(data.path())?;
    for (ip, id) in &owner_of {
        ensure!(
            store.get(ip) == Some(&format!("{id}\r\neth0")),
            "{ip}: {:?}",
            store.get(ip)
        );
    }

    // Each frees what the other allocated.
    for i in 0..3 {
        Call::new("DEL", &format!("r{i}")).run(&ours, &c)?.done()?;
        Call::new("DEL", &format!("o{i}"))
            .run(&theirs, &c)?
            .done()?;
    }
    let left: BTreeSet<String> = allocations(data.path())?.into_values().collect();
    let expected: BTreeSet<String> = (3..8)
        .flat_map(|i| [format!("o{i}\r\neth0"), format!("r{i}\r\neth0")])
        .collect();
    ensure!(left == expected, "{left:?}");
    // Neither hands out the other's address when asked for it.
    let held_by_r5 = owner_of
        .iter()
        .find(|(_, id)| *id == "r5")
        .map(|(ip, _)| ip.clone())
        .unwrap_or_default();
    let held_by_o5 = owner_of
        .iter()
        .find(|(_, id)| *id == "o5")
        .map(|(ip, _)| ip.clone())
        .unwrap_or_default();
    let (code, msg) = Call::new("ADD", "x1")
        .args(&format!("IP={held_by_r5}"))
        .run(&ours, &c)?
        .error()?;
    ensure!(code == 103 && msg.contains("r5"), "{code} {msg}");
    Call::new("ADD", "x2")
        .args(&format!("IP={held_by_o5}"))
        .run(&theirs, &c)?
        .error()?;
    ensure!(allocations(data.path())?.get(&held_by_o5) == Some(&"o5\r\neth0".to_string()));

    // Both at once on the same store: they share the lock file.
    let jobs: Vec<(&Path, Call)> = (0..30)
        .flat_map(|i| {
            [
                (ours.as_path(), Call::new("ADD", &format!("co{i}"))),
                (theirs.as_path(), Call::new("ADD", &format!("cr{i}"))),
            ]
        })
        .collect();
    let children = run_together(&jobs, &c)?;
    let mut all: BTreeSet<String> = allocations(data.path())?.into_keys().collect();
    let before = all.len();
    for ch in children {
        let ip = ip_of(&Reply::of(ch)?.result()?)?;
        ensure!(all.insert(ip.clone()), "{ip} handed out twice");
    }
    ensure!(all.len() == before + 60);
    ensure!(allocations(data.path())?.len() == before + 60);
    Ok(())
}
