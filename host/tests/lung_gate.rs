//! A lung-gated U-Net goes the whole way on real slices: it trains its lung head beside the
//! lesion head, exports the product of the two sigmoids with burn and tract agreeing, quantizes
//! with the gate kept in f32, and onnxruntime agrees with tract on both files where Python has it.

mod common;

use std::path::Path;

use common::{export, fixtures, int8_and_onnxruntime_agree, tvunet};
use prost::Message;
use tract_onnx::pb::ModelProto;
use tvunet::data::{self, Target};
use tvunet_device::Segmenter;

/// `(op, name, inputs)` of one graph node.
type NodeSummary = (String, String, Vec<String>);

/// The last three nodes of `model`'s graph, and its graph output names.
fn tail(model: &Path) -> (Vec<NodeSummary>, Vec<String>) {
    let proto = ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    let graph = proto.graph.unwrap();
    let nodes = graph.node[graph.node.len() - 3..]
        .iter()
        .map(|n| (n.op_type.clone(), n.name.clone(), n.input.clone()))
        .collect();
    (nodes, graph.output.iter().map(|o| o.name.clone()).collect())
}

#[test]
fn lung_gated_network_trains_exports_and_quantizes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let fx = fixtures();
    let (run_s, fx_s) = (run.to_str().unwrap(), fx.to_str().unwrap());
    let args = ["--epochs", "3", "--depth", "2", "--base", "4", "--input-size", "64"];
    let more = ["--folds", "2", "--batch-size", "2", "--lr", "3e-3", "--lung-field"];
    let mut train = vec!["train", "--data", fx_s, "--out", run_s];
    train.extend(args.iter().chain(&more));
    tvunet(&train);

    // The lung head's BCE is logged per epoch, and it learns: lower after three epochs.
    let csv = std::fs::read_to_string(run.join("epochs.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let k = header.iter().position(|&c| c == "train_lung_bce").expect("a train_lung_bce column");
    let lung_bce: Vec<f64> =
        csv.lines().skip(1).map(|l| l.split(',').nth(k).unwrap().parse().unwrap()).collect();
    assert_eq!(lung_bce.len(), 3);
    assert!(lung_bce[2] < lung_bce[0] && lung_bce[0] > 0.0, "lung BCE per epoch {lung_bce:?}");

    let fp32 = dir.path().join("lung.onnx");
    let seg = export(&run, &fp32);
    assert_eq!(seg.meta().input_size, 64);

    let (nodes, outputs) = tail(&fp32);
    let ops: Vec<&str> = nodes.iter().map(|(op, _, _)| op.as_str()).collect();
    assert_eq!(ops, ["Conv", "Sigmoid", "Mul"], "{nodes:?}");
    assert_eq!(nodes[0].1, "lung_head");
    assert_eq!(nodes[2].2, ["head.sigmoid.out", "lung_head.sigmoid.out"]);
    assert_eq!(outputs, ["probability"]);

    let int8 = dir.path().join("lung.int8.onnx");
    let out = common::quantize(&fp32, &int8);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let q = Segmenter::load(&int8).unwrap();
    assert_eq!(q.meta().precision, "int8");
    let (nodes, _) = tail(&int8);
    assert_eq!(nodes[2].0, "Mul", "the int8 graph keeps the gate: {nodes:?}");

    let slices = data::read_folder(&fx, Target::Infection).unwrap();
    int8_and_onnxruntime_agree(&fp32, &int8, dir.path(), &slices);
}
