"""The torch modules exported as ONNX graphs: a shared decoder and one module per backbone."""
