//! `tvunet ensemble`: several exported networks in one ONNX file. The graph feeds each network
//! the slice's input plane, or a mirror image of it, mirrors that network's map back and
//! outputs the mean of the maps, so the device serves the ensemble like any other model: one
//! file, one sha256, one graph run per request.
//!
//! The members keep their own graphs (fp32 or int8) under a prefix per member; nothing about
//! them is re-derived, so an int8 ensemble is the ensemble of int8 files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use prost::Message;
use tract_onnx::pb::{
    tensor_proto::DataType, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
};
use tvunet_device::inference::keys;
use tvunet_device::preprocess::{self, FlipAverage, GraySlice};
use tvunet_device::Segmenter;

/// Metadata key listing the members ([`keys::MEMBERS`]).
pub const MEMBERS_KEY: &str = keys::MEMBERS;

/// Metadata the device reads to use the file, which every member must share (the threshold and
/// flip average are the ensemble's own).
const SHARED: [&str; 4] = [keys::INPUT_SIZE, keys::NORMALISATION, keys::TARGET, keys::PRECISION];

/// Largest tolerated difference between the ensemble file's map and the mean of its members'
/// maps computed one by one.
pub const PARITY_TOLERANCE: f32 = 1e-5;

/// The image a member network sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mirror {
    /// The input plane as it is.
    None,
    /// The plane mirrored left-right (columns reversed).
    LeftRight,
    /// The plane mirrored top-bottom (rows reversed).
    TopBottom,
}

impl Mirror {
    /// The name used on the command line and in the metadata.
    pub fn name(self) -> &'static str {
        match self {
            Mirror::None => "none",
            Mirror::LeftRight => "left-right",
            Mirror::TopBottom => "top-bottom",
        }
    }

    /// ONNX axis reversed (N, C, H, W), if any.
    fn axis(self) -> Option<i64> {
        match self {
            Mirror::None => None,
            Mirror::LeftRight => Some(3),
            Mirror::TopBottom => Some(2),
        }
    }

    /// (left-right, top-bottom) as [`preprocess::mirror`] takes them.
    fn flags(self) -> (bool, bool) {
        (self == Mirror::LeftRight, self == Mirror::TopBottom)
    }
}

/// One network of an ensemble and the image it sees.
#[derive(Debug, Clone)]
pub struct Member {
    pub model: PathBuf,
    pub mirror: Mirror,
}

/// What `ensemble` wrote and checked.
#[derive(Debug, Clone)]
pub struct EnsembleSummary {
    pub file_bytes: u64,
    pub sha256: String,
    pub threshold: f32,
    /// Slices on which the file was checked against its members run one by one.
    pub parity_slices: usize,
    /// Largest |p_file - mean of the members| over those slices.
    pub max_abs_diff: f32,
}

fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ModelProto::decode(&bytes[..]).with_context(|| format!("{}: not an ONNX model", path.display()))
}

fn int64s(name: &str, values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: DataType::Int64 as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// A member's graph with every name but its input and output under `prefix`, reading `input`
/// and writing `output`.
fn renamed(graph: &GraphProto, prefix: &str, input: &str, output: &str) -> Result<GraphProto> {
    let (graph_input, graph_output) = match (graph.input.as_slice(), graph.output.as_slice()) {
        ([i], [o]) => (i.name.clone(), o.name.clone()),
        _ => bail!("a member must have one input and one output"),
    };
    let rename = |name: &str| -> String {
        if name.is_empty() {
            String::new() // an omitted optional input stays omitted
        } else if name == graph_input {
            input.to_string()
        } else if name == graph_output {
            output.to_string()
        } else {
            format!("{prefix}{name}")
        }
    };
    let mut g = graph.clone();
    for n in &mut g.node {
        ensure!(
            n.attribute.iter().all(|a| a.g.is_none() && a.graphs.is_empty()),
            "node {} holds a subgraph; members must be flat graphs",
            n.name
        );
        n.name = format!("{prefix}{}", n.name);
        n.input = n.input.iter().map(|s| rename(s)).collect();
        n.output = n.output.iter().map(|s| rename(s)).collect();
    }
    for t in &mut g.initializer {
        t.name = rename(&t.name);
    }
    for v in &mut g.value_info {
        v.name = rename(&v.name);
    }
    Ok(g)
}

/// Writes the ensemble of `members` to `out`: the mean of their maps, each member fed its
/// mirror image of the plane and its map mirrored back. The members must share input side,
/// normalisation, target and precision. The file's metadata: those four, `threshold` (the
/// averaged map is a new map, so its threshold is chosen for it), flip average `none` (the
/// mirrors are in the graph), [`MEMBERS_KEY`] with each member's full sha256, this tree's
/// version and commit, and any other key only where every member carries the same value (a
/// training fingerprint or a calibration that differs between members describes none of them).
/// The device's loader reads the file back, and on `check` slices its map must equal the
/// members' mean within [`PARITY_TOLERANCE`], or nothing is written.
pub fn ensemble(
    members: &[Member],
    out: &Path,
    threshold: f32,
    check: &[GraySlice],
) -> Result<EnsembleSummary> {
    ensure!(members.len() >= 2, "an ensemble needs at least two --model files");
    for (k, m) in members.iter().enumerate() {
        let same = std::fs::canonicalize(&m.model)
            .ok()
            .zip(std::fs::canonicalize(out).ok())
            .is_some_and(|(a, b)| a == b);
        ensure!(
            !same,
            "--out {} is member {k} (--model); write the ensemble elsewhere",
            out.display()
        );
    }
    let protos: Vec<ModelProto> =
        members.iter().map(|m| read_model(&m.model)).collect::<Result<_>>()?;
    let segmenters: Vec<Segmenter> = members
        .iter()
        .map(|m| Segmenter::load(&m.model).with_context(|| format!("{}", m.model.display())))
        .collect::<Result<_>>()?;
    let first = &segmenters[0].meta();
    for (m, s) in members.iter().zip(&segmenters).skip(1) {
        let meta = s.meta();
        ensure!(
            meta.input_size == first.input_size
                && meta.normalisation == first.normalisation
                && meta.target == first.target
                && meta.precision == first.precision,
            "{}: input {} {}, {} {} differs from {}: input {} {}, {} {}",
            m.model.display(),
            meta.input_size,
            meta.normalisation.name(),
            meta.precision,
            meta.target,
            members[0].model.display(),
            first.input_size,
            first.normalisation.name(),
            first.precision,
            first.target
        );
    }
    for (m, s) in members.iter().zip(&segmenters) {
        if s.meta().flip_average != FlipAverage::None {
            tracing::warn!(
                member = %m.model.display(),
                flip_average = s.meta().flip_average.name(),
                mirror = m.mirror.name(),
                "the member's own flip average does not carry over: in the ensemble it sees only \
                 its --mirror image"
            );
        }
    }
    ensure!(
        threshold > 0.0 && threshold < 1.0,
        "--threshold {threshold}: must lie strictly between 0 and 1"
    );
    let side = first.input_size as i64;
    let reversed: Vec<i64> = (0..side).rev().collect();

    let mut graph = GraphProto {
        name: "tvunet-ensemble".into(),
        input: protos[0].graph.as_ref().context("first member has no graph")?.input.clone(),
        output: protos[0].graph.as_ref().context("first member has no graph")?.output.clone(),
        ..Default::default()
    };
    ensure!(
        graph.input.len() == 1 && graph.output.len() == 1,
        "members need one input, one output"
    );
    let input = graph.input[0].name.clone();
    let output = graph.output[0].name.clone();
    if members.iter().any(|m| m.mirror != Mirror::None) {
        graph.initializer.push(int64s("ensemble.reversed", &reversed));
    }
    let mut maps = Vec::new();
    for (k, (member, proto)) in members.iter().zip(&protos).enumerate() {
        let prefix = format!("member{k}/");
        let g = proto
            .graph
            .as_ref()
            .with_context(|| format!("{}: no graph", member.model.display()))?;
        let member_in = match member.mirror.axis() {
            None => input.clone(),
            Some(axis) => {
                let name = format!("{prefix}mirrored_input");
                let mut n = node("Gather", &name, &[&input, "ensemble.reversed"], &name);
                n.attribute.push(super::onnx::int("axis", axis));
                graph.node.push(n);
                name
            }
        };
        let member_out = format!("{prefix}probability");
        let g = renamed(g, &prefix, &member_in, &member_out)
            .with_context(|| format!("{}", member.model.display()))?;
        graph.node.extend(g.node);
        graph.initializer.extend(g.initializer);
        graph.value_info.extend(g.value_info);
        let map = match member.mirror.axis() {
            None => member_out,
            Some(axis) => {
                let name = format!("{prefix}probability_mirrored_back");
                let mut n = node("Gather", &name, &[&member_out, "ensemble.reversed"], &name);
                n.attribute.push(super::onnx::int("axis", axis));
                graph.node.push(n);
                name
            }
        };
        maps.push(map);
    }
    let mut sum = maps[0].clone();
    for (k, map) in maps.iter().enumerate().skip(1) {
        let name = format!("ensemble.sum{k}");
        graph.node.push(node("Add", &name, &[&sum, map], &name));
        sum = name;
    }
    graph.initializer.push(TensorProto {
        name: "ensemble.share".into(),
        dims: vec![],
        data_type: DataType::Float as i32,
        raw_data: (1.0f32 / members.len() as f32).to_le_bytes().to_vec(),
        ..Default::default()
    });
    graph.node.push(node("Mul", "ensemble.mean", &[&sum, "ensemble.share"], &output));

    let mut seen = HashSet::new();
    for t in &graph.initializer {
        ensure!(seen.insert(t.name.clone()), "two initializers named {}", t.name);
    }

    let mut model = protos[0].clone();
    model.graph = Some(graph);
    // Every member must speak an opset the first one declares (a member written against a newer
    // opset would change meaning silently).
    let opsets = |p: &ModelProto| -> Vec<(String, i64)> {
        p.opset_import.iter().map(|o| (o.domain.clone(), o.version)).collect()
    };
    for (m, p) in members.iter().zip(&protos).skip(1) {
        ensure!(
            p.opset_import == protos[0].opset_import,
            "{}: operator sets {:?} differ from {:?} of {}",
            m.model.display(),
            opsets(p),
            opsets(&protos[0]),
            members[0].model.display()
        );
    }
    let listed: Vec<String> = members
        .iter()
        .zip(&segmenters)
        .map(|(m, s)| format!("{}:{}", s.sha256(), m.mirror.name()))
        .collect();
    let own = [keys::THRESHOLD, keys::FLIP_AVERAGE, MEMBERS_KEY, keys::VERSION, keys::GIT_COMMIT];
    let agreed = |key: &str| {
        let value = |p: &ModelProto| p.metadata_props.iter().find(|e| e.key == key).cloned();
        protos.iter().all(|p| value(p) == value(&protos[0]))
    };
    model.metadata_props.retain(|p| {
        !own.contains(&p.key.as_str()) && (SHARED.contains(&p.key.as_str()) || agreed(&p.key))
    });
    for (key, value) in [
        (keys::THRESHOLD, format!("{threshold}")),
        (keys::FLIP_AVERAGE, FlipAverage::None.name().into()),
        (MEMBERS_KEY, listed.join(",")),
        (keys::VERSION, env!("CARGO_PKG_VERSION").into()),
        (keys::GIT_COMMIT, super::git_commit()),
    ] {
        model.metadata_props.push(StringStringEntryProto { key: key.into(), value });
    }

    let bytes = model.encode_to_vec();
    let file = Segmenter::from_bytes(&bytes, &out.display().to_string())
        .context("the device's loader refused the ensemble")?;
    let mut worst = 0f32;
    let n = side as u32;
    for slice in check {
        let plane = file.input_plane(slice);
        let got = file.probability_plane(&plane)?;
        let mut want = vec![0f32; plane.len()];
        for (m, s) in members.iter().zip(&segmenters) {
            let (lr, tb) = m.mirror.flags();
            let map = s.probability_plane(&preprocess::mirror(&plane, n, n, lr, tb))?;
            for (w, p) in want.iter_mut().zip(preprocess::mirror(&map, n, n, lr, tb)) {
                *w += p / members.len() as f32;
            }
        }
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs());
        }
    }
    ensure!(
        worst <= PARITY_TOLERANCE,
        "the ensemble's map differs from its members' mean by {worst:.2e} (tolerance \
         {PARITY_TOLERANCE:.0e}); nothing written"
    );
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(EnsembleSummary {
        file_bytes: bytes.len() as u64,
        sha256: file.sha256().to_string(),
        threshold,
        parity_slices: check.len(),
        max_abs_diff: worst,
    })
}
