//! Import and export of authorizers, against SQLite always and PostgreSQL when
//! `WXTOKEN_TEST_PG_URL` is set.

use crate::harness::store::{Harness, Kind, appid, component, open_rt};
use wxtoken::model::{AppKind, AuthorizerStatus, SecretSlot};
use wxtoken::transfer::{
    self, ExportOptions, Format, ImportOptions, ImportProgress, TransferError,
};
use wxtoken::vault::{MasterKey, Vault};

macro_rules! on_both_backends {
    ($($story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $story() {
                    let h = super::Harness::new(super::Kind::Sqlite).await.expect("sqlite");
                    super::$story(&h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $story() {
                    let Some(h) = super::Harness::new(super::Kind::Postgres).await else {
                        return;
                    };
                    super::$story(&h).await;
                }
            )*
        }
    };
}

on_both_backends!(
    import_creates_authorizers_and_a_rerun_adds_nothing,
    import_reports_bad_rows_by_line_and_keeps_the_good_ones,
    import_of_a_different_refresh_token_goes_through_the_fence_and_history,
    import_reports_progress_after_each_committed_batch,
    reimporting_an_old_export_never_replaces_a_newer_refresh_token,
    import_with_an_unchanged_refresh_token_still_applies_a_changed_appsecret_and_status,
    export_then_import_into_a_fresh_store_round_trips,
    export_file_is_private_and_not_overwritten_unless_asked,
    export_removes_temporary_files_left_by_a_killed_export,
);

async fn vault_for(h: &Harness) -> Vault {
    let v = Vault::new(&MasterKey::generate(), &[]);
    v.verify(h.store.as_ref()).await.unwrap();
    v
}

async fn run_import(h: &Harness, v: &Vault, text: &str) -> transfer::ImportReport {
    let c = component("wxcomp0001");
    let mut input = text.as_bytes();
    transfer::import(
        h.store.as_ref(),
        v,
        &c,
        &mut input,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap()
}

async fn import_creates_authorizers_and_a_rerun_adds_nothing(h: &Harness) {
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    let csv = "appid,refresh_token,kind,appsecret\n\
               wxa001,refreshtoken@@@one,official_account,secret-one\n\
               wxa002,\"refreshtoken@@@two\",mini_program,\n\
               \n# a comment\n\
               wxa003,refreshtoken@@@three,,\n";
    let r = run_import(h, &v, csv).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(
        (r.progress.created, r.progress.updated, r.progress.unchanged),
        (3, 0, 0)
    );

    let jsonl = "{\"appid\":\"wxa004\",\"refresh_token\":\"refreshtoken@@@four\",\"status\":\"revoked\"}\n\
                 {\"appid\":\"wxa001\",\"refresh_token\":\"refreshtoken@@@one\"}\n";
    let r = run_import(h, &v, jsonl).await;
    assert_eq!((r.progress.created, r.progress.unchanged), (1, 1));

    for text in [csv, jsonl] {
        let r = run_import(h, &v, text).await;
        assert_eq!(
            r.progress.created + r.progress.updated,
            0,
            "re-run changed something"
        );
    }
    assert_eq!(
        h.store
            .authorizers()
            .count_refresh_token_history(Some(&c))
            .await
            .unwrap(),
        4
    );

    let s = &h.store;
    let a1 = s
        .authorizers()
        .get_authorizer(&c, &appid("wxa001"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a1.kind, Some(AppKind::OfficialAccount));
    assert_eq!(
        open_rt(&v, &c, &a1.appid, &a1.refresh_token),
        "refreshtoken@@@one"
    );
    let secret = v
        .open(
            SecretSlot::AuthorizerAppsecret {
                component: &c,
                appid: &a1.appid,
            },
            a1.appsecret.as_ref().unwrap(),
        )
        .unwrap();
    assert_eq!(secret.as_slice(), b"secret-one");
    let a2 = s
        .authorizers()
        .get_authorizer(&c, &appid("wxa002"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a2.kind, Some(AppKind::MiniProgram));
    assert!(a2.appsecret.is_none());
    let a4 = s
        .authorizers()
        .get_authorizer(&c, &appid("wxa004"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a4.status, AuthorizerStatus::Revoked);
}

async fn import_reports_bad_rows_by_line_and_keeps_the_good_ones(h: &Harness) {
    let v = vault_for(h).await;
    let text = "wxgood1,refreshtoken@@@a\n\
                not an appid,refreshtoken@@@b\n\
                wxgood2,refreshtoken@@@c,robot\n\
                wxgood3,\n\
                wxgood4,\"unterminated\n\
                wxgood5,refreshtoken@@@e,official_account,,revoked\n\
                wxgood6,refreshtoken@@@f,official_account,s,active,extra\n";
    let r = run_import(h, &v, text).await;
    let lines: Vec<u64> = r.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 7]);
    assert_eq!(r.progress.created, 2);
    assert_eq!(r.progress.failed, 5);
    for e in &r.errors {
        assert!(!e.reason.contains("refreshtoken@@@"), "{e:?}");
    }
    assert!(r.errors[1].reason.contains("kind"), "{:?}", r.errors[1]);
    assert!(
        r.errors[2].reason.contains("refresh_token"),
        "{:?}",
        r.errors[2]
    );

    // A header naming an unknown column stops the import before anything is written.
    let c = component("wxcomp0001");
    let mut input = "appid,refresh_token,colour\nwxnew,rt,red\n".as_bytes();
    let err = transfer::import(
        h.store.as_ref(),
        &v,
        &c,
        &mut input,
        &ImportOptions::default(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, TransferError::BadHeader(_)), "{err}");
    assert!(
        h.store
            .authorizers()
            .get_authorizer(&c, &appid("wxnew"))
            .await
            .unwrap()
            .is_none()
    );
}

async fn import_of_a_different_refresh_token_goes_through_the_fence_and_history(h: &Harness) {
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    let a = appid("wxa001");
    run_import(h, &v, "wxa001,rt-first\n").await;
    let before = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    let r = run_import(h, &v, "wxa001,rt-second\n").await;
    assert_eq!((r.progress.created, r.progress.updated), (0, 1));
    let after = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.generation, before.generation + 1);
    assert_eq!(open_rt(&v, &c, &a, &after.refresh_token), "rt-second");
    let hist: Vec<String> = h
        .store
        .authorizers()
        .refresh_token_history(&c, &a)
        .await
        .unwrap()
        .iter()
        .map(|e| open_rt(&v, &c, &a, &e.refresh_token))
        .collect();
    assert_eq!(hist, vec!["rt-first", "rt-second"]);

    // The same appid twice in one file: applied in order, each fenced on the previous.
    let r = run_import(h, &v, "wxa001,rt-third\nwxa001,rt-fourth\n").await;
    assert_eq!(r.progress.updated, 2);
    let last = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_rt(&v, &c, &a, &last.refresh_token), "rt-fourth");
    assert_eq!(last.generation, before.generation + 3);
}

async fn reimporting_an_old_export_never_replaces_a_newer_refresh_token(h: &Harness) {
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    let a = appid("wxa001");
    run_import(h, &v, "wxa001,rt-first\n").await;
    run_import(h, &v, "wxa001,rt-second\n").await;
    let before = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();

    // The old export still holds rt-first: it is skipped and reported, the good row still lands.
    let r = run_import(h, &v, "wxa001,rt-first\nwxa002,rt-other\n").await;
    assert_eq!(
        (
            r.progress.created,
            r.progress.updated,
            r.progress.unchanged,
            r.progress.failed
        ),
        (1, 0, 1, 0)
    );
    assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
    assert_eq!(r.errors[0].line, 1);
    assert!(
        r.errors[0]
            .reason
            .contains("older than the stored refresh token"),
        "{:?}",
        r.errors[0]
    );
    assert!(!r.errors[0].reason.contains("rt-first"));
    let after = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_rt(&v, &c, &a, &after.refresh_token), "rt-second");
    assert_eq!(after.generation, before.generation);

    // A token the authorizer never had (one WeChat re-issued) still replaces it, fenced.
    let r = run_import(h, &v, "wxa001,rt-reissued\n").await;
    assert_eq!((r.progress.updated, r.progress.failed), (1, 0));
    let last = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_rt(&v, &c, &a, &last.refresh_token), "rt-reissued");
    assert_eq!(last.generation, before.generation + 1);
}

async fn import_with_an_unchanged_refresh_token_still_applies_a_changed_appsecret_and_status(
    h: &Harness,
) {
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    let a = appid("wxa001");
    run_import(h, &v, "wxa001,rt-one,official_account,secret-one,active\n").await;
    let history = |h: &Harness| {
        let store = h.store.clone();
        let c = c.clone();
        async move {
            store
                .authorizers()
                .count_refresh_token_history(Some(&c))
                .await
                .unwrap()
        }
    };
    assert_eq!(history(h).await, 1);

    let r = run_import(
        h,
        &v,
        "wxa001,rt-one,official_account,secret-two,needs_reauth\n",
    )
    .await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!((r.progress.updated, r.progress.unchanged), (1, 0));
    let rec = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, AuthorizerStatus::NeedsReauth);
    assert_eq!(open_rt(&v, &c, &a, &rec.refresh_token), "rt-one");
    let secret = v
        .open(
            SecretSlot::AuthorizerAppsecret {
                component: &c,
                appid: &a,
            },
            rec.appsecret.as_ref().unwrap(),
        )
        .unwrap();
    assert_eq!(secret.as_slice(), b"secret-two");
    assert_eq!(history(h).await, 1, "no new refresh-token history row");

    // The same file again changes nothing.
    let r = run_import(
        h,
        &v,
        "wxa001,rt-one,official_account,secret-two,needs_reauth\n",
    )
    .await;
    assert_eq!((r.progress.updated, r.progress.unchanged), (0, 1));

    // A different kind cannot be applied without a new refresh token: reported, not failed.
    let r = run_import(h, &v, "wxa001,rt-one,mini_program\n").await;
    assert_eq!((r.progress.unchanged, r.progress.failed), (1, 0));
    assert_eq!(r.errors.len(), 1);
    assert!(r.errors[0].reason.contains("kind"), "{:?}", r.errors[0]);

    // A new token, then the same token with a new status, in one file: both apply, in order.
    let r = run_import(h, &v, "wxa001,rt-two\nwxa001,rt-two,,,revoked\n").await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(r.progress.updated, 2);
    let rec = h
        .store
        .authorizers()
        .get_authorizer(&c, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, AuthorizerStatus::Revoked);
    assert_eq!(open_rt(&v, &c, &a, &rec.refresh_token), "rt-two");
}

async fn import_reports_progress_after_each_committed_batch(h: &Harness) {
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    let text: String = (0..25).map(|i| format!("wxa{i:03},rt-{i}\n")).collect();
    let mut seen: Vec<ImportProgress> = Vec::new();
    let mut input = text.as_bytes();
    let r = transfer::import(
        h.store.as_ref(),
        &v,
        &c,
        &mut input,
        &ImportOptions {
            batch_size: 10,
            format: Some(Format::Csv),
        },
        &mut |p| seen.push(*p),
    )
    .await
    .unwrap();
    let created: Vec<u64> = seen.iter().map(|p| p.created).collect();
    assert_eq!(created, vec![10, 20, 25]);
    assert_eq!(seen.last().unwrap().bytes, text.len() as u64);
    assert_eq!(r.progress.lines, 25);
}

async fn export_then_import_into_a_fresh_store_round_trips(h: &Harness) {
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    let text = "appid,refresh_token,kind,appsecret,status\n\
                wxa001,\"refresh,token with comma\",official_account,sec1,active\n\
                wxa002,refreshtoken@@@two,,,needs_reauth\n\
                wxa003,refreshtoken@@@three,mini_program,,revoked\n";
    run_import(h, &v, text).await;
    let dir = tempfile::tempdir().unwrap();
    for format in [Format::Csv, Format::JsonLines] {
        let path = dir.path().join(match format {
            Format::Csv => "out.csv",
            Format::JsonLines => "out.jsonl",
        });
        let report = transfer::export(
            h.store.as_ref(),
            &v,
            &c,
            &path,
            &ExportOptions {
                format,
                overwrite: false,
            },
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!(report.rows, 3);

        // Into a fresh database (of the same kind), under a different master key.
        let target = Harness::new(h.kind).await.unwrap();
        let v2 = vault_for(&target).await;
        let r = transfer::import_file(
            target.store.as_ref(),
            &v2,
            &c,
            &path,
            &ImportOptions::default(),
            &mut |_| {},
        )
        .await
        .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.progress.created, 3);
        let src = h
            .store
            .authorizers()
            .load_authorizers(Some(&c))
            .await
            .unwrap();
        let dst = target
            .store
            .authorizers()
            .load_authorizers(Some(&c))
            .await
            .unwrap();
        assert_eq!(src.len(), dst.len());
        for (a, b) in src.iter().zip(&dst) {
            assert_eq!((&a.appid, a.kind, a.status), (&b.appid, b.kind, b.status));
            assert_eq!(
                open_rt(&v, &c, &a.appid, &a.refresh_token),
                open_rt(&v2, &c, &b.appid, &b.refresh_token)
            );
            assert_eq!(a.appsecret.is_some(), b.appsecret.is_some());
        }
    }
}

async fn export_file_is_private_and_not_overwritten_unless_asked(h: &Harness) {
    use std::os::unix::fs::PermissionsExt;
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    run_import(h, &v, "wxa001,rt-1\n").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authorizers.csv");
    std::fs::write(&path, "keep me").unwrap();
    let opts = |overwrite| ExportOptions {
        format: Format::Csv,
        overwrite,
    };
    let err = transfer::export(h.store.as_ref(), &v, &c, &path, &opts(false), &mut |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, TransferError::Exists(_)), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");

    transfer::export(h.store.as_ref(), &v, &c, &path, &opts(true), &mut |_| {})
        .await
        .unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("wxa001,rt-1,")
    );

    let fresh = dir.path().join("new.jsonl");
    transfer::export(
        h.store.as_ref(),
        &v,
        &c,
        &fresh,
        &ExportOptions {
            format: Format::JsonLines,
            overwrite: false,
        },
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

async fn export_removes_temporary_files_left_by_a_killed_export(h: &Harness) {
    let v = vault_for(h).await;
    let c = component("wxcomp0001");
    run_import(h, &v, "wxa001,rt-one\n").await;
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".out.csv.0123456789abcdef.partial");
    let fresh = dir.path().join(".out.csv.fedcba9876543210.partial");
    let unrelated = dir.path().join(".out.csv.notes.partial");
    for p in [&stale, &fresh, &unrelated] {
        std::fs::write(p, "wxa000,refreshtoken@@@left-behind\n").unwrap();
    }
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for p in [&stale, &unrelated] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let out = dir.path().join("out.csv");
    for overwrite in [false, true] {
        let r = transfer::export(
            h.store.as_ref(),
            &v,
            &c,
            &out,
            &ExportOptions {
                format: Format::Csv,
                overwrite,
            },
            &mut |_| {},
        )
        .await
        .unwrap();
        assert_eq!(r.rows, 1);
    }
    assert!(!stale.exists(), "the killed export's file is removed");
    assert!(
        fresh.exists(),
        "a file another export may still be writing is kept"
    );
    assert!(
        unrelated.exists(),
        "only the export's own temporary names are touched"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ".out.csv.fedcba9876543210.partial".to_owned(),
            ".out.csv.notes.partial".to_owned(),
            "out.csv".to_owned()
        ]
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
