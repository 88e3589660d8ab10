"""`curate crop`: subject-aware crops (user box > alpha mask > faces > saliency) to a target
size and aspect, written as new files; originals are never touched.

subject.py finds the subject box, geometry.py fits the crop around it, render.py writes it,
run.py works on a workspace (crops recorded in the manifest) or a folder with --out.
"""
