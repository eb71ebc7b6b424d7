"""World-model components: networks, MoE encoders, RSSM, student and teacher world models."""
from .moe import (BatchedConvExperts, BatchedMLPExperts, LabelCNNEncoder, OrthogonalMoEEncoder, gram_schmidt,
                  gram_schmidt_vectors, mean_abs_cosine)
from .networks import MLP, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .rssm import RSSM, balanced_kl
from .teacher_io import config_mismatches, load_teacher, teacher_payload
from .world_model import ARCH_KEYS, TEACHER_ARCH_KEYS, TeacherWorldModel, WorldModel, compile_model, obs_shapes_from

__all__ = ["ARCH_KEYS", "BatchedConvExperts", "BatchedMLPExperts", "ConvDecoder", "ConvEncoder", "LabelCNNEncoder",
           "MLP", "MLPDecoder", "MLPEncoder", "OrthogonalMoEEncoder", "RSSM", "TEACHER_ARCH_KEYS",
           "TeacherWorldModel", "WorldModel", "balanced_kl", "compile_model", "config_mismatches", "gram_schmidt",
           "gram_schmidt_vectors", "load_teacher", "mean_abs_cosine", "obs_shapes_from", "teacher_payload"]
