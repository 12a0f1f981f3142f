"""A multimodal GAN anonymizer and its knobs (generator, critics, training, application).

Threat model and data flow: README, "GAN anonymizer".
"""
