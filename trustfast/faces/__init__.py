"""Face recognition and verification: IResNet embedders, ArcFace / CosFace heads, training,
the LFW 10-fold protocol, TAR@FAR, and a thresholded verifier to attack.

Distances are squared Euclidean distances between L2-normalized embeddings (2 - 2 cos); a pair
matches iff its distance is below the threshold. Example (about 25 s on one CPU thread)::

    from trustfast.data import face_pairs, synthetic_faces
    from trustfast.faces import (FaceTrainConfig, FaceVerifier, evaluate_pairs,
                                 train_face_model)

    x, y = synthetic_faces(60, 15, size=32)                          # 60 training identities
    model, _ = train_face_model(x, y, FaceTrainConfig(epochs=10, batch_size=64, s=32.0,
                                                      warmup_epochs=1))
    xt, yt = synthetic_faces(40, 10, size=32, identity_offset=100_000)  # unseen identities
    a, b, same = face_pairs(yt, 600, seed=0)
    print(evaluate_pairs(model, xt[a], xt[b], same)["accuracy"])      # about 0.96
    verifier = FaceVerifier.fit(model, xt[a], xt[b], same)
    e = verifier.embed(xt[a[:4]].requires_grad_())                  # differentiable in x
"""

from trustfast.faces.datasets import ImageFolderFaces, load_image, load_pairs, read_pairs
from trustfast.faces.models import HEADS, IRESNET_LAYERS, TINY, ArcFace, CosFace, IResNet, iresnet
from trustfast.faces.train import FaceTrainConfig, load_face_model, train_face_model
from trustfast.faces.verify import (
    FaceVerifier,
    best_threshold,
    embed,
    embed_differentiable,
    evaluate_pairs,
    fit_threshold,
    kfold_accuracy,
    pair_distances,
    tar_at_far,
    verification_accuracy,
    verify,
)

__all__ = [
    "HEADS", "IRESNET_LAYERS", "TINY", "ArcFace", "CosFace", "FaceTrainConfig", "FaceVerifier",
    "IResNet", "ImageFolderFaces", "best_threshold", "embed", "embed_differentiable",
    "evaluate_pairs", "fit_threshold", "iresnet", "kfold_accuracy", "load_face_model",
    "load_image", "load_pairs", "pair_distances", "read_pairs", "tar_at_far", "train_face_model",
    "verification_accuracy", "verify",
]
