"""What a request is: the task classifier and language detection, with their optional C accelerator
(`_features.c`) and the shipped model (`data/`). Pure; imports only the standard library.
"""
