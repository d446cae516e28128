"""A measured per-layer latency model over pruned forms (ONNX Runtime or eager PyTorch): `measure_latency_model`
times each convolution in its forms and calibrates their sum on whole networks, `LatencyModel.network_ms`
predicts a pruned network's time."""

from structprune.latency_model.calibration import CalibrationPoint, Coefficients, fit_calibration
from structprune.latency_model.forms import layer_form, network_forms
from structprune.latency_model.measure import measure_latency_model
from structprune.latency_model.model import LatencyModel, LayerForm

__all__ = ["CalibrationPoint", "Coefficients", "LatencyModel", "LayerForm", "fit_calibration", "layer_form",
           "measure_latency_model", "network_forms"]
