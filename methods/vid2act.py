"""`vid2act`: a label-conditioned CNN teacher, an unconditioned linear projection of every task view
onto the student's latent, relevance-weighted as in `comet`, without pruning."""
from __future__ import annotations

from torch import nn

from .comet import Comet


class Vid2Act(Comet):
    name = "vid2act"
    encoder = "label_cnn"  # vid2act is defined by its label-conditioned CNN
    prunes = False
    conditional_projection = False

    def make_projection(self, c):
        return nn.Linear(self.teacher_feat, self.student_feat)
