"""Where a dampened forgotten head row is sent (dampening.ranked_last_reference), on features of either sign (issue 16,
top-2 leak). Per architecture: a digits model trained 6 epochs (test_resnet at 16x16: post-ReLU pooled features,
>= 0; test_convnext at 32x32: LayerNorm'd pre-logits, either sign), a transfer child of it (frozen backbone, a new
6-label head 7,3,1,5,0,8 fit on its features) that forgets 4 of its 6 classes (1,3,5,7) from its own FIMs (the
normalized estimator). Prints and writes forget % / retain % / top-2 leak % of the child for each reference rule and
margin, and the features' facts (min value, RMS and max norm on the test set, and the norm the head FIM gives).

    nice -n 10 python benchmarks/reference_rules.py [test_resnet test_convnext]
"""
import copy, json, sys
import torch, torch.nn.functional as F, timm
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fiun_hub import dampening as D
from fiun_hub.data import load_data
from fiun_hub.research.training import train_classifier
from fiun_hub.evaluate import forget_retain_accuracy, top2_leak

HEAD = {"test_convnext": ["head.fc.weight", "head.fc.bias"], "test_resnet": ["fc.weight", "fc.bias"]}
out = {}
for arch in sys.argv[1:] or ["test_resnet", "test_convnext"]:
    S = (32, 32) if "convnext" in arch else (16, 16)  # test_convnext needs >= 32 px
    train = load_data("digits:train", in_chans=1, input_size=S)
    test = load_data("digits:test", in_chans=1, input_size=S)
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10, in_chans=1)
    train_classifier(model, train, epochs=6, lr=3e-3, seed=0)
    model.eval()
    idx = [7, 3, 1, 5, 0, 8]
    labels = [str(i) for i in idx]
    child = copy.deepcopy(model); child.reset_classifier(6)
    sub = train.to_label_space(labels)
    with torch.no_grad():
        h = child.forward_head(child.forward_features(sub.x), pre_logits=True)
        ht = child.forward_head(child.forward_features(test.x), pre_logits=True)
    fc = child.get_classifier()
    torch.manual_seed(1)
    opt = torch.optim.Adam(fc.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad(); F.cross_entropy(fc(h), sub.y).backward(); opt.step()
    child.eval()
    with torch.no_grad():
        z = fc(h)
    mf, cf, cnt = D.normalized_head_fisher(h, z, sub.y)
    wn, bn = HEAD[arch]
    ren = lambda d: {wn: d["weight"], bn: d["bias"]}
    model_fim, class_fims = ren(mf), {labels[c]: ren(v) for c, v in cf.items()}
    counts = {labels[c]: n for c, n in cnt.items()}
    est = float(D.feature_norm_stacked(model_fim[wn][None], model_fim[bn][None])[0])
    facts = {"min_feature": float(ht.min()), "rms_norm": float(ht.norm(dim=1).pow(2).mean().sqrt()),
             "max_norm": float(ht.norm(dim=1).max()), "fim_norm_estimate": est}
    forget = ["1", "3", "5", "7"]
    u = D.unlearning_fim(class_fims, counts, forget)
    params = {n: p.detach() for n, p in child.named_parameters() if n in HEAD[arch]}
    f0, r0 = forget_retain_accuracy(child, labels, test, forget)
    rows = {"original": (round(f0, 1), round(r0, 1), round(top2_leak(child, labels, test, forget), 1))}
    for rule, margin in [("retained-mean", 0), ("elementwise-min", 0), ("ranked-last", 0), ("ranked-last", 0.5),
                         ("ranked-last", 1), ("ranked-last", 2)]:
        D.DEFAULT_RANK_MARGIN = margin
        new = D.class_forget_update(params, labels, model_fim, class_fims, counts, u, forget, HEAD[arch],
                                    reference_rule=rule)
        m = copy.deepcopy(child)
        with torch.no_grad():
            for n, t in new.items():
                dict(m.named_parameters())[n].copy_(t)
        f1, r1 = forget_retain_accuracy(m, labels, test, forget)
        rows[f"{rule} {margin}"] = (round(f1, 1), round(r1, 1), round(top2_leak(m, labels, test, forget), 1))
    out[arch] = {"input_size": list(S), "facts": facts, "forget/retain/top2": rows}
    print(arch, json.dumps(out[arch], indent=1), flush=True)
(ROOT / "benchmarks" / "results" / "reference_rules.json").write_text(json.dumps(
    {"command": "python benchmarks/reference_rules.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
     "timm": timm.__version__, "rows": "forget %, retain %, top-2 leak % of the transfer child", "results": out},
    indent=1) + "\n")
