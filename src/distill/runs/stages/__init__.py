"""Run stages that are not a kind of run: the teacher-output cache (``cache``), the
compression stages (``compress``) and the checked ONNX export (``export``)."""
