//! Writes a folded U-Net as an ONNX model (opset 13) with the protobuf types tract-onnx exposes,
//! so the device's own reader is the first judge of the file.

use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::folded::{FoldedBlock, FoldedConv, FoldedUNet};

/// ONNX operator set the graph is written against.
pub const OPSET: i64 = 13;

pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

pub fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, shape: &[usize]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimValue(d as i64)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `Conv` attributes for a stride-1 convolution of weight shape `dims` with "same" padding.
pub fn conv_attributes(dims: [usize; 4], group: usize) -> Vec<AttributeProto> {
    let pad = (dims[2] / 2) as i64;
    let mut attrs = vec![
        ints("kernel_shape", &[dims[2] as i64, dims[3] as i64]),
        ints("pads", &[pad, pad, pad, pad]),
        ints("strides", &[1, 1]),
    ];
    if group > 1 {
        attrs.push(int("group", group as i64));
    }
    attrs
}

/// Accumulates nodes and initializers with readable dotted names.
#[derive(Default)]
pub struct Graph {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
}

impl Graph {
    pub fn node(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = format!("{name}.out");
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    pub fn weights(&mut self, name: &str, c: &FoldedConv, bias_len: usize) -> (String, String) {
        let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
        self.initializers.push(tensor_f32(&w, &c.dims, &c.weight));
        self.initializers.push(tensor_f32(&b, &[bias_len], &c.bias));
        (w, b)
    }

    fn conv(&mut self, name: &str, x: &str, c: &FoldedConv, relu: bool) -> String {
        let (w, b) = self.weights(name, c, c.dims[0]);
        let y = self.node("Conv", name, &[x, &w, &b], conv_attributes(c.dims, c.group));
        if relu {
            self.node("Relu", &format!("{name}.relu"), &[&y], vec![])
        } else {
            y
        }
    }

    /// The f32 output stage from the last decoder `features`: the 1x1 lesion `head` and its
    /// sigmoid, times the sigmoid of the 1x1 `lung` head where there is one, as the graph output
    /// `probability`.
    pub fn probability(&mut self, features: &str, head: &FoldedConv, lung: Option<&FoldedConv>) {
        let logits = self.conv("head", features, head, false);
        let lesion = self.node("Sigmoid", "head.sigmoid", &[&logits], vec![]);
        if let Some(lung) = lung {
            let lung_logits = self.conv("lung_head", features, lung, false);
            let field = self.node("Sigmoid", "lung_head.sigmoid", &[&lung_logits], vec![]);
            self.node("Mul", "probability", &[&lesion, &field], vec![]);
        }
        // The graph output keeps the plain name the device and the metadata refer to.
        if let Some(last) = self.nodes.last_mut() {
            last.output = vec!["probability".into()];
        }
    }

    fn block(&mut self, name: &str, x: &str, b: &FoldedBlock) -> String {
        let mut x = x.to_string();
        for (conv, dw, c) in [("conv1", &b.dw1, &b.conv1), ("conv2", &b.dw2, &b.conv2)] {
            if let Some(dw) = dw {
                x = self.conv(&format!("{name}.{conv}.depthwise"), &x, dw, false);
            }
            x = self.conv(&format!("{name}.{conv}"), &x, c, true);
        }
        x
    }
}

/// Builds the ONNX model: input `slice` (1 x 1 x side x side, normalised), output `probability`
/// (same shape, sigmoid of the logits), with `metadata` as `metadata_props`.
pub fn unet_to_onnx(net: &FoldedUNet, metadata: &[(String, String)]) -> ModelProto {
    let side = net.config.input_size as usize;
    let mut g = Graph::default();
    let mut x = "slice".to_string();
    let mut skips = Vec::new();
    for (level, b) in net.down.iter().enumerate() {
        let y = g.block(&format!("down{level}"), &x, b);
        x = g.node(
            "MaxPool",
            &format!("down{level}.pool"),
            &[&y],
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        );
        skips.push(y);
    }
    x = g.block("bottom", &x, &net.bottom);
    for (k, (up, b)) in net.up.iter().enumerate() {
        let level = net.up.len() - 1 - k;
        let name = format!("up{level}");
        let (w, bias) = g.weights(&format!("{name}.upsample"), up, up.dims[1]);
        let u = g.node(
            "ConvTranspose",
            &format!("{name}.upsample"),
            &[&x, &w, &bias],
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        );
        let skip = skips.pop().expect("one skip per level");
        let cat = g.node("Concat", &format!("{name}.concat"), &[&u, &skip], vec![int("axis", 1)]);
        x = g.block(&name, &cat, b);
    }
    g.probability(&x, &net.head, net.lung_head.as_ref());
    model(g, side, metadata)
}

/// Wraps a finished graph with input `slice` and output `probability` (both 1 x 1 x side x
/// side, f32) into an opset-13 model carrying `metadata`.
pub fn model(g: Graph, side: usize, metadata: &[(String, String)]) -> ModelProto {
    let graph = GraphProto {
        name: "tvunet".into(),
        node: g.nodes,
        initializer: g.initializers,
        input: vec![value_info("slice", &[1, 1, side, side])],
        output: vec![value_info("probability", &[1, 1, side, side])],
        ..Default::default()
    };
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "tvunet".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: k.clone(), value: v.clone() })
            .collect(),
        ..Default::default()
    }
}

/// Serialises a model to bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
