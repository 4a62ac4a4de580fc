"""Evaluation of synthesized images (``sims eval``, paper §6): image sets scored against their layouts.

For every named image set (SIMS, the parametric baseline, ...) and for the real photos:

1. segmentation consistency: a segmenter trained on real photos segments each image; its
   prediction, at the layout's resolution, is scored against the layout (mIoU over the classes
   present, pixel accuracy). The real photos give the reference score;
2. L1 to the real photo, on the 0..1 scale, at the synthesized image's size;
3. fine detail: the share of power above half the Nyquist radius, over the real photos' share at
   the same size (:func:`~synthesis.evaluation.spectrum.high_frequency_ratio`; 1.0 = as detailed);
4. the mean radially averaged power spectrum, and its distance to the real photos' spectrum at
   the same image size (:mod:`synthesis.evaluation.spectrum`);
5. KID ×10³ between the set and the real photos on the evaluation segmenter's bottleneck
   features, each image at its own resolution (:mod:`synthesis.evaluation.kid`; not Inception);
6. what the canvas leaves visible (:mod:`synthesis.evaluation.seams`): the seam score on
   provenance boundaries inside one class, and the detail in the pixels the canvas lacks, each
   over the real photo's at the same pixels, at the regions of the set's own canvas or, for sets
   without one, of the first SIMS set's canvas for the same layout.

Every measure is taken at the resolution a set comes in: nothing here resizes a set's images
(checkpoint sets run the product pipeline, which returns images at the layout's resolution).
Real photos are resized with area averaging to a set's size before anything is compared with it;
when sets are smaller than the photos, a reference row shows real photos at that size.

Image sets come from folders of PNGs named like the val photos (``0016E5_07959.png``), from a
synthesis checkpoint run in-process through :class:`~synthesis.pipeline.SynthesisPipeline`
(:class:`~.image_sets.PipelineImages`), from any function of a layout
(:class:`~.image_sets.SynthesizedImages`), or from other sets (:class:`~.image_sets.PastedImages`:
a canvas's kept pixels over another set's output). Items are scored one at a time, every set on
the same item in turn, so a set keeps only the current item's output
(:class:`~.image_sets.SetOutput`: the image and, for canvas-based sets, the canvas) and derived
sets and the gallery (``on_item``) see all outputs of an item together.

Modules: :mod:`.image_sets` (items and image sets), :mod:`.scoring`
(:func:`~.scoring.evaluate_image_sets`: the measures above, into an :class:`~.scoring.EvalReport`),
:mod:`.report` (report.md, report.json and the plots), :mod:`.gallery` (the HTML gallery); the
measures themselves in :mod:`.metrics`, :mod:`.spectrum`, :mod:`.kid` and :mod:`.seams`.
"""
