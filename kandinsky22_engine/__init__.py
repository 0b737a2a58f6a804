"""Kandinsky 2.2 engine of the infer_kandinsky_2_2 plugin: settings, model cache, generation.

It imports nothing from Ikomia or Qt, so it runs where Ikomia is not installed.
"""
