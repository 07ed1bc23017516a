//! The labelled-slice readers on real MedSeg slices and on a NIfTI pair written here.

use std::path::{Path, PathBuf};

use tvunet::data::{self, DataError, Target};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/medseg")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Real slices read with their own sizes, binary labels, and ground glass a subset of infection.
#[test]
fn reads_real_slices_with_labels() {
    let infection = data::read_folder(&fixtures(), Target::Infection).unwrap();
    let ggo = data::read_folder(&fixtures(), Target::Ggo).unwrap();
    assert!(infection.len() >= 3, "{} fixture slices", infection.len());
    let mut sizes = std::collections::HashSet::new();
    for (inf, g) in infection.iter().zip(&ggo) {
        assert_eq!(inf.id, g.id);
        let s = &inf.image;
        assert!(
            (150..=520).contains(&s.width) && (150..=520).contains(&s.height),
            "{}: {}x{}",
            inf.id,
            s.width,
            s.height
        );
        assert_eq!(inf.mask.len(), s.len(), "slice {}", inf.id);
        assert!(inf.mask.iter().all(|&v| v <= 1), "slice {} mask is 0/1", inf.id);
        assert!(inf.mask.contains(&1), "slice {} has lesion", inf.id);
        assert!(
            inf.mask.iter().zip(&g.mask).all(|(&i, &g)| g <= i),
            "slice {}: ggo within infection",
            inf.id
        );
        sizes.insert((s.width, s.height));
    }
    assert!(sizes.len() > 1, "fixture slices come in several sizes");
}

/// The multiclass masks agree with the binary masks (binary == multiclass > 0).
#[test]
fn binary_and_multiclass_masks_agree() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), dir.path());
    let from_multiclass = data::read_folder(dir.path(), Target::Infection).unwrap();
    std::fs::remove_dir_all(dir.path().join("masks_multiclass")).unwrap();
    let from_binary = data::read_folder(dir.path(), Target::Infection).unwrap();
    for (a, b) in from_multiclass.iter().zip(&from_binary) {
        assert_eq!(a.mask, b.mask, "slice {}", a.id);
    }
}

/// A missing mask is an error naming the slice and the mask it looked for.
#[test]
fn missing_mask_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), dir.path());
    let victim =
        std::fs::read_dir(dir.path().join("masks_multiclass")).unwrap().next().unwrap().unwrap();
    std::fs::remove_file(victim.path()).unwrap();
    let err = data::read_folder(dir.path(), Target::Infection).unwrap_err();
    assert!(matches!(err, DataError::MissingMask { .. }), "{err}");
    let msg = err.to_string();
    let stem = victim.path().file_stem().unwrap().to_string_lossy().into_owned();
    assert!(
        msg.contains(&format!("images/{stem}."))
            && msg.contains(&format!("masks_multiclass/{stem}.png")),
        "{msg}"
    );
}

/// A mask of another size than its slice is refused, naming both files and sizes.
#[test]
fn mismatched_mask_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures(), dir.path());
    std::fs::remove_dir_all(dir.path().join("masks_multiclass")).unwrap();
    let victim =
        std::fs::read_dir(dir.path().join("masks_binary")).unwrap().next().unwrap().unwrap().path();
    image::GrayImage::new(7, 9).save(&victim).unwrap();
    let msg = data::read_folder(dir.path(), Target::Infection).unwrap_err().to_string();
    assert!(msg.contains("7x9") && msg.contains(&victim.display().to_string()), "{msg}");
}

/// A MedSeg-style NIfTI pair (x, y, z volumes of pseudo-HU and labels 0..3) reads slice by slice
/// with the lung window and the chosen labels.
#[test]
fn reads_nifti_pair() {
    use ndarray::Array3;
    use nifti::writer::WriterOptions;
    let dir = tempfile::tempdir().unwrap();
    let (nx, ny, nz) = (24, 20, 3);
    let mut hu = Array3::<f32>::from_elem((nx, ny, nz), -1050.0);
    let mut labels = Array3::<f32>::zeros((nx, ny, nz));
    for z in 0..nz {
        for x in 4..10 {
            for y in 2..5 + z {
                hu[[x, y, z]] = -450.0;
                labels[[x, y, z]] = if x < 7 { 1.0 } else { 2.0 };
            }
        }
    }
    labels[[0, 0, 2]] = 3.0; // effusion: never a lesion for either target
    let (im, mk) = (dir.path().join("tr_im.nii.gz"), dir.path().join("tr_mask.nii.gz"));
    WriterOptions::new(&im).write_nifti(&hu).unwrap();
    WriterOptions::new(&mk).write_nifti(&labels).unwrap();

    let inf = data::read_nifti_pair(&im, &mk, Target::Infection).unwrap();
    let ggo = data::read_nifti_pair(&im, &mk, Target::Ggo).unwrap();
    assert_eq!(inf.len(), nz);
    for z in 0..nz {
        let s = &inf[z];
        assert_eq!(
            (s.image.width, s.image.height),
            (ny as u32, nx as u32),
            "rows are x, columns y"
        );
        let lesion = s.mask.iter().filter(|&&v| v == 1).count();
        assert_eq!(lesion, 6 * (3 + z), "slice {z}");
        assert_eq!(ggo[z].mask.iter().filter(|&&v| v == 1).count(), 3 * (3 + z), "slice {z}");
        // Lung window -1350..150 HU: -1050 HU maps to 51, -450 HU to 153.
        assert_eq!(s.image.pixels[0], 51, "-1050 HU in the lung window");
        assert_eq!(s.image.pixels[4 * ny + 2], 153, "-450 HU in the lung window");
    }
    let bad = dir.path().join("short.nii.gz");
    WriterOptions::new(&bad).write_nifti(&Array3::<f32>::zeros((nx, ny, 2))).unwrap();
    let msg = data::read_nifti_pair(&im, &bad, Target::Infection).unwrap_err().to_string();
    assert!(msg.contains("does not match"), "{msg}");
}
