"""Data: audio decoding, manifests, the demo corpus, SAP import and validation.

Modules are imported by name (whisper_moe.data.audio, .manifest, .demo, .sap,
.validate) so that importing the package stays cheap.
"""
