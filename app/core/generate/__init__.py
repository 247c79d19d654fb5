"""Test generation, the compatibility doctor and quality comparison.

Public entry points (all Qt-free; torch, transformers and llama_cpp load only when a job runs):
`request.GenerateRequest`, `doctor.DoctorRequest` / `doctor.diagnose`,
`compare.CompareRequest`, and the pure placement planner in `placement`.
"""
