"""Trained students as artefacts: reload a checkpoint, evaluate it, quantize and export its acting policy."""
